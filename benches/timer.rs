//! Benchmarks of `wschat::timer::TimerWheel` at the reactor's settings (10 ms ticks,
//! 4096 slots) with 100k and 1M timers whose deadlines are spread over 30 s.
//! Each measured iteration performs N operations on a wheel built outside the timing,
//! so the reported time divided by N (or 1 / the reported throughput) is ns per operation.

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use std::time::{Duration, Instant};
use wschat::timer::{TimerKey, TimerWheel};

const RESOLUTION: Duration = Duration::from_millis(10);
const SLOTS: usize = 4096;
const SPREAD_MICROS: u64 = 30_000_000;
const COUNTS: [usize; 2] = [100_000, 1_000_000];

/// Deterministic pseudo-random numbers (xorshift64), so runs are comparable.
fn pseudo_random(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

fn spread_deadlines(origin: Instant, count: usize) -> Vec<Instant> {
    let mut state = 0x9E37_79B9_7F4A_7C15;
    (0..count)
        .map(|_| origin + Duration::from_micros(1 + pseudo_random(&mut state) % SPREAD_MICROS))
        .collect()
}

fn filled_wheel(origin: Instant, deadlines: &[Instant]) -> (TimerWheel<usize>, Vec<TimerKey>) {
    let mut wheel = TimerWheel::new(RESOLUTION, SLOTS, origin);
    let keys = (0..).zip(deadlines).map(|(value, &deadline)| wheel.insert(deadline, value)).collect();
    (wheel, keys)
}

fn insert(c: &mut Criterion) {
    let mut group = c.benchmark_group("insert");
    group.sample_size(10);
    for count in COUNTS {
        let origin = Instant::now();
        let deadlines = spread_deadlines(origin, count);
        group.throughput(Throughput::Elements(count as u64));
        group.bench_with_input(BenchmarkId::from_parameter(count), &deadlines, |b, deadlines| {
            b.iter_batched(
                // A wheel that already held `count` timers: the steady state of a server
                // whose connection count is stable, with no slab growth inside the timing.
                || {
                    let (mut wheel, keys) = filled_wheel(origin, deadlines);
                    for key in keys {
                        wheel.cancel(key);
                    }
                    wheel
                },
                |mut wheel| {
                    for (value, &deadline) in deadlines.iter().enumerate() {
                        black_box(wheel.insert(deadline, value));
                    }
                    wheel
                },
                BatchSize::PerIteration,
            );
        });
    }
    group.finish();
}

fn cancel(c: &mut Criterion) {
    let mut group = c.benchmark_group("cancel");
    group.sample_size(10);
    for count in COUNTS {
        let origin = Instant::now();
        let deadlines = spread_deadlines(origin, count);
        group.throughput(Throughput::Elements(count as u64));
        group.bench_with_input(BenchmarkId::from_parameter(count), &deadlines, |b, deadlines| {
            b.iter_batched(
                || {
                    let (wheel, mut keys) = filled_wheel(origin, deadlines);
                    // Cancel in an order unrelated to insertion, as closing connections do.
                    let mut state = 42;
                    for index in (1..keys.len()).rev() {
                        keys.swap(index, (pseudo_random(&mut state) % (index as u64 + 1)) as usize);
                    }
                    (wheel, keys)
                },
                |(mut wheel, keys)| {
                    for &key in &keys {
                        black_box(wheel.cancel(key));
                    }
                    wheel
                },
                BatchSize::PerIteration,
            );
        });
    }
    group.finish();
}

fn expire(c: &mut Criterion) {
    let mut group = c.benchmark_group("expire");
    group.sample_size(10);
    for count in COUNTS {
        let origin = Instant::now();
        let deadlines = spread_deadlines(origin, count);
        group.throughput(Throughput::Elements(count as u64));
        group.bench_with_input(BenchmarkId::from_parameter(count), &deadlines, |b, deadlines| {
            b.iter_batched(
                || filled_wheel(origin, deadlines).0,
                // Like the reactor: one expire per tick until every timer has fired.
                |mut wheel| {
                    let mut fired = Vec::new();
                    let ticks = SPREAD_MICROS / 10_000 + 1;
                    for tick in 1..=ticks as u32 {
                        wheel.expire(origin + RESOLUTION * tick, &mut fired);
                        black_box(&fired);
                        fired.clear();
                    }
                    assert!(wheel.is_empty());
                    wheel
                },
                BatchSize::PerIteration,
            );
        });
    }
    group.finish();
}

fn next_timeout(c: &mut Criterion) {
    let origin = Instant::now();
    let (mut wheel, _keys) = filled_wheel(origin, &spread_deadlines(origin, 20_000));
    c.bench_function("next_timeout/20000", |b| b.iter(|| black_box(wheel.next_timeout(black_box(origin)))));
}

criterion_group!(benches, insert, cancel, expire, next_timeout);
criterion_main!(benches);
