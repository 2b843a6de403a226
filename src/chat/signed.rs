//! Members who connected with a signed token: their name is held for them, their rooms may be
//! limited, and their token runs out. Shortly before it does the chat sends `refresh`; a fresh
//! token (`auth`) moves the deadline, and a member whose token ran out is closed with 4001.
//! The deadlines are the chat's own, in one ordered set; the reactor wakes the chat for the
//! nearest (`Outbox::wake_at`).

use std::collections::BTreeSet;

use mio::Token;

use super::names::check_name_shape;
use super::protocol::{ErrorCode, Event, Rejection, UpgradeQuery};
use super::{Chat, DEFAULT_ROOM, reject};
use crate::auth::{AuthMode, Identity, TokenError, Verifier};
use crate::handler::{CloseCode, Outbox, Refusal, RequestHead};
use crate::http;

/// How long before its token runs out a member is asked for a fresh one (or half the time left,
/// if less): time for a client to fetch a token from its backend.
const REFRESH_LEAD_MS: u64 = 30_000;
/// The close code for a member whose token ran out (a private-use code, RFC 6455 section 7.4.2).
pub const TOKEN_EXPIRED: u16 = 4001;
/// The close code for a member replaced by a newer connection with a token for the same name.
pub const SIGNED_IN_ELSEWHERE: u16 = 4002;

/// Tokens, when the server uses them.
pub struct Auth {
    pub verifier: Verifier,
    pub mode: AuthMode,
}

/// A member's token, as the chat keeps it.
pub struct Signed {
    pub identity: Identity,
    /// Whether `refresh` has been sent for this token (then the next deadline is its expiry).
    refresh_sent: bool,
    /// This member's entry in `TokenDeadlines`.
    deadline: (u64, Token),
}

/// Every signed member's next deadline (refresh or expiry), earliest first.
#[derive(Default)]
pub struct TokenDeadlines(BTreeSet<(u64, Token)>);

impl TokenDeadlines {
    pub(crate) fn first(&self) -> Option<u64> {
        self.0.first().map(|&(at, _)| at)
    }

    /// A member's token: its refresh is due `REFRESH_LEAD_MS` before it runs out. Boxed: most
    /// members have no token, and their records should not carry the room for one.
    pub fn track(&mut self, token: Token, identity: Identity, now_ms: u64) -> Box<Signed> {
        let lead = REFRESH_LEAD_MS.min(identity.expires_at_ms.saturating_sub(now_ms) / 2);
        let deadline = (identity.expires_at_ms - lead, token);
        self.0.insert(deadline);
        Box::new(Signed { identity, refresh_sent: false, deadline })
    }

    pub fn forget(&mut self, signed: &Signed) {
        self.0.remove(&signed.deadline);
    }

    /// The refresh has been asked for: the member's next deadline is its token's expiry.
    fn refresh_sent(&mut self, signed: &mut Signed) {
        signed.refresh_sent = true;
        signed.deadline = (signed.identity.expires_at_ms, signed.deadline.1);
        self.0.insert(signed.deadline);
    }

    /// The members whose deadline has come by `now_ms`, taken out of the set.
    fn take_due(&mut self, now_ms: u64) -> Vec<Token> {
        let mut due = Vec::new();
        while let Some(&(at, token)) = self.0.first() {
            if at > now_ms {
                break;
            }
            self.0.pop_first();
            due.push(token);
        }
        due
    }
}

/// Why an upgrade is refused for its token, as the reactor will answer it.
fn refused(reason: impl Into<String>) -> Refusal {
    let reason = reason.into();
    Refusal { response: http::unauthorized(&format!("invalid token: {reason}")), reason }
}

impl Auth {
    /// The identity in `token`, checked at `now_ms`.
    pub(crate) fn verify(&self, token: &str, now_ms: u64) -> Result<Identity, TokenError> {
        self.verifier.verify(token, now_ms, |name| check_name_shape(name).is_ok())
    }

    /// Before the 101: a token that is required and missing, or present and not valid, is a 401;
    /// one that allows no room at all, a 403.
    pub(crate) fn check_upgrade(&self, request: &RequestHead, now_ms: u64) -> Result<(), Refusal> {
        match UpgradeQuery::parse(&request.target).token {
            None if self.mode == AuthMode::Optional => Ok(()),
            None => Err(refused("no token (pass one as ?token=)")),
            Some(token) => match self.verify(&token, now_ms) {
                Ok(identity) if identity.rooms.as_ref().is_some_and(Vec::is_empty) => {
                    let reason = "the token allows no room".to_owned();
                    Err(Refusal { response: http::plain(403, "Forbidden", &format!("{reason}\n")), reason })
                }
                Ok(_) => Ok(()),
                Err(error) => Err(refused(error.to_string())),
            },
        }
    }

    /// The identity a new connection's token gives it, checked again (it was checked before the
    /// 101, but time has passed). `Err` if the token ran out in between.
    pub(crate) fn identity_of(
        &self,
        query: &UpgradeQuery,
        now_ms: u64,
    ) -> Result<Option<Identity>, TokenError> {
        query.token.as_ref().map(|token| self.verify(token, now_ms)).transpose()
    }
}

impl Chat {
    /// Turns on tokens: a `--auth-secret-file` secret and whether tokens are required.
    pub fn with_auth(mut self, verifier: Verifier, mode: AuthMode) -> Self {
        self.auth = Some(Auth { verifier, mode });
        self
    }

    /// Before the 101: see [`Auth::check_upgrade`].
    pub(super) fn check_token(&self, request: &RequestHead, now_ms: u64) -> Result<(), Refusal> {
        self.auth.as_ref().map_or(Ok(()), |auth| auth.check_upgrade(request, now_ms))
    }

    /// The identity a new connection's token gives it: see [`Auth::identity_of`].
    pub(super) fn identity_of(
        &self,
        query: &UpgradeQuery,
        now_ms: u64,
    ) -> Result<Option<Identity>, TokenError> {
        self.auth.as_ref().map_or(Ok(None), |auth| auth.identity_of(query, now_ms))
    }

    /// A signed member takes its name: a guest who had picked it becomes a guest again, and an
    /// older connection with a token for the same name is closed (the newest wins, so a client
    /// that reconnects before the server noticed its old connection is gone is not locked out).
    pub(super) fn claim_name<O: Outbox>(&mut self, name: &str, out: &mut O) {
        let Some(&holder) = self.names.get(name) else { return };
        let Some(member) = self.members.get(&holder) else { return };
        if member.signed.is_some() {
            out.close(holder, CloseCode::from(SIGNED_IN_ELSEWHERE), "signed in from elsewhere");
            return;
        }
        let guest = super::names::guest_name(member.id);
        self.rename(holder, guest, out);
        let message = format!("the name `{name}` belongs to a signed-in member; you are a guest again");
        reject(out, holder, &Rejection::new(ErrorCode::NameTaken, message), None);
    }

    /// The room a signed member enters: the one asked for if the token allows it (else a
    /// `forbidden` problem), the lobby if allowed, or the first room the token names.
    pub(crate) fn allowed_room(identity: &Identity, wanted: String, problems: &mut Vec<Rejection>) -> String {
        if identity.may_enter(&wanted) {
            return wanted;
        }
        problems.push(Rejection::new(
            ErrorCode::Forbidden,
            format!("your token does not allow the room `{wanted}`"),
        ));
        if identity.may_enter(DEFAULT_ROOM) {
            return DEFAULT_ROOM.to_owned();
        }
        // Invariant: `check_token` refused tokens whose `rooms` is empty, and `may_enter` is
        // true for every room when there is no list.
        identity
            .rooms
            .as_ref()
            .and_then(|rooms| rooms.first())
            .cloned()
            .unwrap_or_else(|| DEFAULT_ROOM.to_owned())
    }

    /// `{"type":"auth","token":...}`: a fresh token for the same name moves the member's deadline.
    pub(super) fn refresh_token<O: Outbox>(
        &mut self,
        token: Token,
        id: Option<&str>,
        fresh: &str,
        out: &mut O,
    ) {
        let Some(member) = self.members.get_mut(&token) else { return };
        let auth = self.auth.as_ref();
        if refresh(auth, &mut self.token_deadlines, &mut member.signed, token, id, fresh, out) {
            self.schedule(out);
        }
    }

    /// The wake-up came: see [`deadlines_due`].
    pub(super) fn token_deadlines_due<O: Outbox>(&mut self, out: &mut O) {
        deadlines_due(&mut self.token_deadlines, &mut self.members, out);
    }
}

/// `{"type":"auth","token":...}` from the member at `token`, whose token is `signed`: a fresh
/// token for the same name moves its deadline (and is acknowledged); anything else is refused
/// with an error. Returns whether the deadline moved.
pub(crate) fn refresh<O: Outbox>(
    auth: Option<&Auth>,
    deadlines: &mut TokenDeadlines,
    signed: &mut Option<Box<Signed>>,
    token: Token,
    id: Option<&str>,
    fresh: &str,
    out: &mut O,
) -> bool {
    let now = out.unix_time_ms();
    let Some(auth) = auth else {
        let rejection = Rejection::new(ErrorCode::Unauthorized, "this server does not use tokens");
        reject(out, token, &rejection, id);
        return false;
    };
    let identity = match auth.verify(fresh, now) {
        Ok(identity) => identity,
        Err(error) => {
            let rejection = Rejection::new(ErrorCode::Unauthorized, format!("token refused: {error}"));
            reject(out, token, &rejection, id);
            return false;
        }
    };
    let problem = match signed {
        None => Some("sign in when connecting: pass ?token= on the upgrade"),
        Some(signed) if signed.identity.name != identity.name => {
            Some("a fresh token must be for the same name")
        }
        Some(_) => None,
    };
    if let Some(problem) = problem {
        reject(out, token, &Rejection::new(ErrorCode::Forbidden, problem), id);
        return false;
    }
    if let Some(old) = signed.take() {
        deadlines.forget(&old);
    }
    *signed = Some(deadlines.track(token, identity, now));
    if let Some(id) = id {
        out.send(token, &Event::Ack { id, seq: None, ts: now }.to_frame());
    }
    true
}

/// Members by connection, as far as their tokens go (the chat's and the cluster's).
pub(crate) trait SignedMembers {
    fn signed_mut(&mut self, token: Token) -> Option<&mut Signed>;
}

impl SignedMembers for crate::token_map::TokenMap<super::Member> {
    fn signed_mut(&mut self, token: Token) -> Option<&mut Signed> {
        self.get_mut(&token)?.signed.as_deref_mut()
    }
}

/// The wake-up came: members whose refresh is due get `refresh`, members whose token ran out
/// are closed with 4001.
pub(crate) fn deadlines_due<O: Outbox>(
    deadlines: &mut TokenDeadlines,
    members: &mut impl SignedMembers,
    out: &mut O,
) {
    let now = out.unix_time_ms();
    for token in deadlines.take_due(now) {
        let Some(signed) = members.signed_mut(token) else { continue };
        if signed.refresh_sent || now >= signed.identity.expires_at_ms {
            out.close(token, CloseCode::from(TOKEN_EXPIRED), "token expired");
            continue;
        }
        deadlines.refresh_sent(signed);
        out.send(token, &Event::Refresh.to_frame());
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::tests::{Recorder, START_MS, open, say};
    use super::*;
    use crate::auth::mint;
    use crate::handler::Handler;

    const SECRET: &[u8] = b"the chat's token tests, 32 bytes or more";

    fn chat(mode: AuthMode) -> Chat {
        Chat::new(50).with_auth(Verifier::new(SECRET).unwrap(), mode)
    }

    /// A token for `sub` that runs out `ttl_secs` after the recorder's start.
    fn token(sub: &str, ttl_secs: u64) -> String {
        mint(SECRET, sub, START_MS / 1000 + ttl_secs, None).unwrap()
    }

    fn upgrade(target: String) -> RequestHead {
        RequestHead {
            method: "GET".into(),
            target,
            origin: None,
            forwarded: None,
            x_forwarded_for: None,
            wants_websocket: true,
        }
    }

    #[test]
    fn upgrades_are_refused_for_missing_or_bad_tokens_as_the_mode_says() {
        let required = chat(AuthMode::Required);
        let optional = chat(AuthMode::Optional);
        let refusal = required.check_token(&upgrade("/".into()), START_MS).unwrap_err();
        assert!(refusal.response.starts_with(b"HTTP/1.1 401"));
        assert!(optional.check_token(&upgrade("/".into()), START_MS).is_ok());
        for chat in [&required, &optional] {
            let bad = chat.check_token(&upgrade("/?token=nope".into()), START_MS).unwrap_err();
            assert_eq!(bad.reason, "malformed token");
            assert!(chat.check_token(&upgrade(format!("/?token={}", token("alice", 60))), START_MS).is_ok());
            let expired =
                chat.check_token(&upgrade(format!("/?token={}", token("alice", 60))), START_MS + 60_000);
            assert_eq!(expired.unwrap_err().reason, "token expired");
        }
    }

    #[test]
    fn a_member_is_asked_for_a_fresh_token_then_closed_with_4001() {
        let (mut chat, mut out) = (chat(AuthMode::Required), Recorder::default());
        let welcome = open(&mut chat, &mut out, 1, &format!("/?name=x&token={}", token("alice", 100)));
        assert_eq!(welcome["name"], "alice");
        // The refresh is due 30 s before the token runs out.
        assert_eq!(out.wakes.last(), Some(&(START_MS + 70_000)));
        out.now_ms = START_MS + 70_000;
        chat.on_timer(&mut out);
        assert_eq!(out.take(1), [json!({"type": "refresh"})]);
        assert_eq!(out.wakes.last(), Some(&(START_MS + 100_000)));
        out.now_ms = START_MS + 100_000;
        chat.on_timer(&mut out);
        assert_eq!(out.closed, [(Token(1), CloseCode::from(TOKEN_EXPIRED))]);
    }

    #[test]
    fn a_fresh_token_for_the_same_name_moves_the_deadline() {
        let (mut chat, mut out) = (chat(AuthMode::Required), Recorder::default());
        open(&mut chat, &mut out, 1, &format!("/?token={}", token("alice", 10)));
        // A short token: asked for a fresh one halfway.
        assert_eq!(out.wakes.last(), Some(&(START_MS + 5_000)));
        say(&mut chat, &mut out, 1, &json!({"type": "auth", "token": token("bob", 600)}).to_string());
        assert_eq!(out.take(1)[0]["code"], "forbidden");
        say(
            &mut chat,
            &mut out,
            1,
            &json!({"type": "auth", "token": token("alice", 600), "id": "t"}).to_string(),
        );
        assert_eq!(out.take(1), [json!({"type": "ack", "id": "t", "ts": START_MS})]);
        out.now_ms = START_MS + 10_000;
        chat.on_timer(&mut out);
        assert!(out.closed.is_empty() && out.take(1).is_empty(), "the old deadline is gone");
        out.now_ms = START_MS + 570_000;
        chat.on_timer(&mut out);
        assert_eq!(out.take(1), [json!({"type": "refresh"})]);
    }

    #[test]
    fn the_tokens_name_is_held_against_guests_and_older_connections() {
        let (mut chat, mut out) = (chat(AuthMode::Optional), Recorder::default());
        open(&mut chat, &mut out, 1, "/?name=alice");
        let welcome = open(&mut chat, &mut out, 2, &format!("/?token={}", token("alice", 600)));
        assert_eq!(welcome["name"], "alice");
        let guest = out.take(1);
        assert_eq!((&guest[0]["type"], &guest[0]["name"]), (&json!("nick"), &json!("guest-1")));
        assert_eq!(guest[1]["code"], "name_taken");
        say(&mut chat, &mut out, 2, r#"{"type":"nick","name":"alicia"}"#);
        assert_eq!(out.take(2)[0]["code"], "forbidden");
        // The same name again: the newest connection wins, the older is closed with 4002 and
        // leaving does not free the name the newer one holds.
        open(&mut chat, &mut out, 3, &format!("/?token={}", token("alice", 600)));
        assert_eq!(out.closed, [(Token(2), CloseCode::from(SIGNED_IN_ELSEWHERE))]);
        chat.on_close(Token(2), &mut out);
        say(&mut chat, &mut out, 1, r#"{"type":"nick","name":"alice"}"#);
        assert_eq!(out.take(1).last().unwrap()["code"], "name_taken");
    }

    #[test]
    fn a_token_with_rooms_keeps_its_member_to_them() {
        let (mut chat, mut out) = (chat(AuthMode::Required), Recorder::default());
        let rooms = Some(vec!["go".to_owned(), "rust".to_owned()]);
        let limited = mint(SECRET, "bob", START_MS / 1000 + 600, rooms).unwrap();
        chat.on_open(Token(1), &format!("/?room=lobby&token={limited}"), &mut out);
        let events = out.take(1);
        assert_eq!((&events[0]["room"], &events[1]["code"]), (&json!("go"), &json!("forbidden")));
        say(&mut chat, &mut out, 1, r#"{"type":"join","room":"rust"}"#);
        assert_eq!(out.take(1)[0]["type"], "room");
        say(&mut chat, &mut out, 1, r#"{"type":"join","room":"lobby"}"#);
        assert_eq!(out.take(1)[0]["code"], "forbidden");
    }
}
