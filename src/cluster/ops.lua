-- wschat's cluster operations: every change to shared state is one call of this script, so Redis
-- runs it whole, between any two other commands. The node loads it once per connection (SCRIPT
-- LOAD) and calls it with EVALSHA.
--
-- ARGV[1] the operation, ARGV[2] the key prefix (--redis-prefix), ARGV[3] the calling node,
-- ARGV[4] how long a room without members is kept (ms, --history-ttl), ARGV[5] how many
-- messages a room keeps (--history); the operation's own arguments follow.
--
-- Keys (one Redis, not Redis Cluster: the script builds its keys from the prefix):
--   P:nodes          zset: node -> when it is presumed dead unless it beats again (server ms)
--   P:tags           hash: id tag -> node (the high bits of the node's member ids)
--   P:node-tag       hash: node -> its id tag
--   P:node:N         hash: member id -> {"room":..,"name":..,"signed":..} of node N's members
--   P:names          hash: name -> "NODE ID" of its holder, cluster-wide
--   P:meta:R         hash: epoch, seq (the latest message), ev (the latest room event),
--                    joins (arrivals so far)
--   P:members:R      hash: member id -> "ORDER NAME" (ORDER counts arrivals: lists keep it)
--   P:history:R      stream of the room's latest message events, entry id "SEQ-0", within
--                    --history messages and the bytes a welcome carries (meta's hbytes)
-- Channels: P:room:R carries the room's events, P:node:N what is for node N alone.
--
-- Every room event is published as one JSON envelope carrying the room's event counter `ev`, so
-- a node sees a gap (a lost subscription) and catches up from the stored state.

local op, P, node = ARGV[1], ARGV[2], ARGV[3]
local ttl_ms, history = tonumber(ARGV[4]), tonumber(ARGV[5])

local function meta_key(room) return P .. ':meta:' .. room end
local function members_key(room) return P .. ':members:' .. room end
local function history_key(room) return P .. ':history:' .. room end
local function room_channel(room) return P .. ':room:' .. room end
local function node_channel(n) return P .. ':node:' .. n end
local function node_key(n) return P .. ':node:' .. n end
local names, nodes, tags, node_tag = P .. ':names', P .. ':nodes', P .. ':tags', P .. ':node-tag'

local function now_ms()
  local time = redis.call('TIME')
  return tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
end

local function owner(n, id) return n .. ' ' .. id end

local function user_json(id, name)
  return '{"id":' .. id .. ',"name":' .. cjson.encode(name) .. '}'
end

-- The room's epoch, made `candidate` if the room has none: it is new, or Redis lost it, and
-- with it any history a client might think it can resume.
local function epoch_of(room, candidate)
  if redis.call('HSETNX', meta_key(room), 'epoch', candidate) == 1 then
    redis.call('DEL', history_key(room))
    redis.call('HDEL', meta_key(room), 'hbytes')
  end
  return redis.call('HGET', meta_key(room), 'epoch')
end

-- The name and arrival order of member `id` in `room`, if it is there.
local function member_of(room, id)
  local value = redis.call('HGET', members_key(room), id)
  if not value then return nil end
  local order, name = string.match(value, '^(%d+) (.*)$')
  return name, order
end

local function publish(room, kind, body)
  local ev = redis.call('HINCRBY', meta_key(room), 'ev', 1)
  -- No epoch only if Redis lost the room under its members (evicted): nodes resynchronize.
  local epoch = redis.call('HGET', meta_key(room), 'epoch') or ''
  redis.call('PUBLISH', room_channel(room),
    '{"ev":' .. ev .. ',"epoch":"' .. epoch .. '","kind":"' .. kind .. '",' .. body .. '}')
  return ev
end

local function keep(room)
  redis.call('PERSIST', meta_key(room))
  redis.call('PERSIST', history_key(room))
end

-- A room left without members is kept for --history-ttl, then Redis forgets it.
local function maybe_expire(room)
  if redis.call('HLEN', members_key(room)) > 0 then return end
  if ttl_ms > 0 then
    redis.call('PEXPIRE', meta_key(room), ttl_ms)
    redis.call('PEXPIRE', history_key(room), ttl_ms)
  else
    redis.call('DEL', meta_key(room), history_key(room))
  end
end

-- Member `id` leaves `room` (and stays on the server): the room hears `left`. Returns the name
-- the room knew it by, if it was there.
local function leave_room(id, room)
  local name = member_of(room, id)
  if not name then return nil end
  redis.call('HDEL', members_key(room), id)
  publish(room, 'left', '"user":' .. user_json(id, name))
  maybe_expire(room)
  return name
end

-- Member `id` of node `n` leaves the server: its room hears `left`, its name is freed (if it
-- still holds it).
local function leave(n, id, room)
  redis.call('HDEL', node_key(n), id)
  local name = leave_room(id, room)
  if name and redis.call('HGET', names, name) == owner(n, id) then
    redis.call('HDEL', names, name)
  end
end

-- Takes `name` for member `id`: free, already its own, or (for a signed member) taken from its
-- holder, whose node is told. Returns false if a guest's name is held by someone else.
local function claim(id, name, signed)
  local holder = redis.call('HGET', names, name)
  local mine = owner(node, id)
  if holder and holder ~= mine then
    if signed ~= '1' then return false end
    local holder_node, holder_id = string.match(holder, '^(%S+) (%d+)$')
    if holder_node then
      redis.call('PUBLISH', node_channel(holder_node),
        '{"kind":"evict","id":' .. holder_id .. ',"name":' .. cjson.encode(name) .. '}')
    end
  end
  redis.call('HSET', names, name, mine)
  return true
end

local function record(id, room, name, signed)
  redis.call('HSET', node_key(node), id, cjson.encode({ room = room, name = name, signed = signed }))
end

-- Enters member `id` into `room` under `name`, telling the room. Returns the event's ev.
local function enter(id, name, room, epoch_candidate)
  epoch_of(room, epoch_candidate)
  keep(room)
  local order = redis.call('HINCRBY', meta_key(room), 'joins', 1)
  redis.call('HSET', members_key(room), id, order .. ' ' .. name)
  return publish(room, 'joined', '"order":' .. order .. ',"user":' .. user_json(id, name))
end

-- The room as a node needs it: epoch, seq and ev, every member ("ORDER NAME"), the latest
-- messages (newest first), all read at one instant.
local function state(room, epoch_candidate)
  local epoch = epoch_of(room, epoch_candidate)
  local counters = redis.call('HMGET', meta_key(room), 'seq', 'ev')
  local kept = {}
  if history > 0 then
    kept = redis.call('XREVRANGE', history_key(room), '+', '-', 'COUNT', history)
  end
  return { epoch, tonumber(counters[1]) or 0, tonumber(counters[2]) or 0,
    redis.call('HGETALL', members_key(room)), kept }
end

-- A node is gone: each of its members leaves, once (only the caller that removes the node from
-- the set does this).
local function reap(n)
  local members = redis.call('HGETALL', node_key(n))
  for i = 1, #members, 2 do
    local member = cjson.decode(members[i + 1])
    leave(n, members[i], member.room)
  end
  redis.call('DEL', node_key(n))
  local tag = redis.call('HGET', node_tag, n)
  if tag and redis.call('HGET', tags, tag) == n then redis.call('HDEL', tags, tag) end
  redis.call('HDEL', node_tag, n)
end

-- The node beats: it is presumed alive until `timeout_ms` from now. Returns {1 if it was not in
-- the set (it had been presumed dead and reaped, or Redis forgot it), the nodes it reaped}.
local function beat(timeout_ms)
  local now = now_ms()
  local was_missing = redis.call('ZADD', nodes, now + timeout_ms, node)
  local reaped = {}
  for _, dead in ipairs(redis.call('ZRANGEBYSCORE', nodes, '-inf', now)) do
    if dead ~= node and redis.call('ZREM', nodes, dead) == 1 then
      reap(dead)
      reaped[#reaped + 1] = dead
    end
  end
  return { was_missing, reaped }
end

if op == 'enter' then
  -- ARGV: id, name, room, signed, guest name, epoch candidate, room it leaves ('' if none)
  local id, name, room, signed, guest, epoch, old = ARGV[6], ARGV[7], ARGV[8], ARGV[9], ARGV[10], ARGV[11], ARGV[12]
  local taken = 0
  if old ~= '' then
    leave_room(id, old)
  elseif not claim(id, name, signed) then
    taken, name = 1, guest
    claim(id, name, '0')
  end
  record(id, room, name, signed)
  local ev = enter(id, name, room, epoch)
  return { taken, name, ev, state(room, epoch) }

elseif op == 'leave' then
  -- ARGV: id, room
  leave(node, ARGV[6], ARGV[7])
  return 1

elseif op == 'say' then
  -- ARGV: id, room, the event before its seq, the event after it, most bytes of history
  local id, room, budget = ARGV[6], ARGV[7], tonumber(ARGV[10])
  if not member_of(room, id) then return { 0 } end
  local seq = redis.call('HINCRBY', meta_key(room), 'seq', 1)
  local event = ARGV[8] .. seq .. ARGV[9]
  if history > 0 then
    -- The stream keeps the latest --history messages within the byte budget a welcome can
    -- carry; `hbytes` counts its bytes.
    local stream = history_key(room)
    redis.call('XADD', stream, seq .. '-0', 'e', event)
    local bytes = redis.call('HINCRBY', meta_key(room), 'hbytes', #event)
    while bytes > budget or redis.call('XLEN', stream) > history do
      local oldest = redis.call('XRANGE', stream, '-', '+', 'COUNT', 1)[1]
      if not oldest then break end
      redis.call('XDEL', stream, oldest[1])
      bytes = redis.call('HINCRBY', meta_key(room), 'hbytes', -#oldest[2][2])
    end
  end
  publish(room, 'message', '"from":' .. id .. ',"seq":' .. seq .. ',"event":' .. event)
  return { seq }

elseif op == 'dm' then
  -- ARGV: recipient's name, the event before the recipient's id, the event after it
  local holder = redis.call('HGET', names, ARGV[6])
  if not holder then return 0 end
  local holder_node, holder_id = string.match(holder, '^(%S+) (%d+)$')
  redis.call('PUBLISH', node_channel(holder_node),
    '{"kind":"dm","to":' .. holder_id .. ',"event":' .. ARGV[7] .. holder_id .. ARGV[8] .. '}')
  return tonumber(holder_id)

elseif op == 'nick' then
  -- ARGV: id, room, old name, new name
  local id, room, old, new = ARGV[6], ARGV[7], ARGV[8], ARGV[9]
  local _, order = member_of(room, id)
  if not order then return 0 end
  if not claim(id, new, '0') then return 0 end
  if old ~= new and redis.call('HGET', names, old) == owner(node, id) then redis.call('HDEL', names, old) end
  redis.call('HSET', members_key(room), id, order .. ' ' .. new)
  record(id, room, new, '0')
  publish(room, 'nick', '"id":' .. id .. ',"old":' .. cjson.encode(old) .. ',"name":' .. cjson.encode(new))
  return 1

elseif op == 'state' then
  -- ARGV: room, epoch candidate
  return state(ARGV[6], ARGV[7])

elseif op == 'beat' then
  -- ARGV: how long this node may go without beating before it is presumed dead (ms)
  return beat(tonumber(ARGV[6]))

elseif op == 'assert' then
  -- After a (re)connect: this node's id tag and its members as it knows them (JSON list of
  -- {id, name, room, signed}); Redis is made to agree, whatever it forgot or was told meanwhile.
  -- ARGV: tag, timeout (ms), members, epoch candidate. Returns {0} if another node holds the tag,
  -- else {1, id, guest name, id, guest name...} for members whose name was taken meanwhile.
  local tag, timeout_ms, wanted, epoch = ARGV[6], tonumber(ARGV[7]), cjson.decode(ARGV[8]), ARGV[9]
  local tag_holder = redis.call('HGET', tags, tag)
  if tag_holder and tag_holder ~= node then return { 0 } end
  redis.call('HSET', tags, tag, node)
  redis.call('HSET', node_tag, node, tag)
  beat(timeout_ms)
  local still = {}
  for _, member in ipairs(wanted) do still[member.id] = true end
  local known = redis.call('HGETALL', node_key(node))
  for i = 1, #known, 2 do
    if not still[known[i]] then leave(node, known[i], cjson.decode(known[i + 1]).room) end
  end
  local renamed = { 1 }
  for _, member in ipairs(wanted) do
    local name = member.name
    if not claim(member.id, name, member.signed) then
      name = member.guest
      claim(member.id, name, '0')
      renamed[#renamed + 1] = member.id
      renamed[#renamed + 1] = name
    end
    record(member.id, member.room, name, member.signed)
    local present, order = member_of(member.room, member.id)
    if not present then
      enter(member.id, name, member.room, epoch)
    elseif present ~= name then
      redis.call('HSET', members_key(member.room), member.id, order .. ' ' .. name)
      publish(member.room, 'nick',
        '"id":' .. member.id .. ',"old":' .. cjson.encode(present) .. ',"name":' .. cjson.encode(name))
    end
  end
  return renamed

elseif op == 'stop' then
  -- A graceful exit: whatever members are left leave, and the node is gone.
  reap(node)
  redis.call('ZREM', nodes, node)
  return 1
end

return redis.error_reply('wschat: unknown operation ' .. tostring(op))
