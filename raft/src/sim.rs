//! BUGGIFY-style fault points, in the manner of FoundationDB: places in production code where the
//! simulator may make a rare thing happen on purpose — a transport send that fails, a message that
//! dawdles, a follower slow to take its entries — so the rare paths run on every seed, not once a year
//! in production.
//!
//! [`maybe`] is a constant `false` unless the crate is built with the `fault-points` feature, which only
//! the simulator enables: a build without the simulator (`cargo build -p domicile --no-default-features`)
//! has no fault point at all. Even with the feature, nothing fires until a simulation [`arm`]s this
//! thread with its seed, so the simulator's tests and a node running in the same binary are unaffected.
//!
//! Armed, each point is switched on or off for the whole run when it is first reached (on with
//! probability 1/4, decided by a hash of the seed and the point's name, so independent of the order
//! points are reached), and an enabled point then fires on 1 in 20 of its calls, drawn from a stream
//! seeded by the run's seed. The simulator runs on one thread, so the draws happen in the same order on
//! every replay of a seed.

#[cfg(feature = "fault-points")]
mod armed {
    use std::cell::RefCell;
    use std::collections::BTreeMap;

    /// 1 in `ENABLED_ONE_IN` points is switched on for a run.
    const ENABLED_ONE_IN: u64 = 4;
    /// An enabled point fires on 1 in `FIRES_ONE_IN` calls.
    const FIRES_ONE_IN: u64 = 20;

    struct Armed {
        seed: u64,
        stream: u64,
        enabled: BTreeMap<&'static str, bool>,
        fired: BTreeMap<&'static str, u64>,
        paused: bool,
    }

    thread_local! {
        static ARMED: RefCell<Option<Armed>> = const { RefCell::new(None) };
    }

    /// SplitMix64: small, fast, and the same on every platform.
    fn mix(mut z: u64) -> u64 {
        z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn name_hash(point: &str) -> u64 {
        point.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
            (hash ^ byte as u64).wrapping_mul(0x1000_0000_01b3)
        })
    }

    pub fn arm(seed: u64) {
        ARMED.with(|armed| {
            *armed.borrow_mut() = Some(Armed {
                seed,
                stream: mix(seed ^ 0xb066_1f7e),
                enabled: BTreeMap::new(),
                fired: BTreeMap::new(),
                paused: false,
            })
        });
    }

    pub fn disarm() -> BTreeMap<&'static str, u64> {
        ARMED.with(|armed| {
            armed
                .borrow_mut()
                .take()
                .map(|armed| armed.fired)
                .unwrap_or_default()
        })
    }

    pub fn pause() {
        ARMED.with(|armed| {
            if let Some(armed) = armed.borrow_mut().as_mut() {
                armed.paused = true;
            }
        });
    }

    pub fn draw(point: &'static str, bound: u64) -> Option<u64> {
        ARMED.with(|armed| {
            let mut armed = armed.borrow_mut();
            let armed = armed.as_mut().filter(|armed| !armed.paused)?;
            let seed = armed.seed;
            let enabled = *armed
                .enabled
                .entry(point)
                .or_insert_with(|| mix(seed ^ name_hash(point)).is_multiple_of(ENABLED_ONE_IN));
            if !enabled {
                return None;
            }
            armed.stream = mix(armed.stream);
            if !armed.stream.is_multiple_of(FIRES_ONE_IN) {
                return None;
            }
            *armed.fired.entry(point).or_default() += 1;
            armed.stream = mix(armed.stream);
            Some(armed.stream % bound.max(1))
        })
    }
}

/// Whether the fault at `point` happens this time. Always `false` outside an armed simulation.
#[inline]
pub fn maybe(point: &'static str) -> bool {
    #[cfg(feature = "fault-points")]
    {
        armed::draw(point, 1).is_some()
    }
    #[cfg(not(feature = "fault-points"))]
    {
        let _ = point;
        false
    }
}

/// When the fault at `point` happens this time, a delay of up to `max_ms` milliseconds; `None` otherwise.
#[inline]
pub fn maybe_delay_ms(point: &'static str, max_ms: u64) -> Option<u64> {
    #[cfg(feature = "fault-points")]
    {
        armed::draw(point, max_ms + 1)
    }
    #[cfg(not(feature = "fault-points"))]
    {
        let _ = (point, max_ms);
        None
    }
}

/// Arms this thread's fault points for one simulated run, seeded by `seed`.
#[cfg(feature = "fault-points")]
pub fn arm(seed: u64) {
    armed::arm(seed);
}

/// Stops this thread's fault points firing (the faults of a run are over; its counts are kept).
#[cfg(feature = "fault-points")]
pub fn pause() {
    armed::pause();
}

/// Disarms this thread's fault points; returns how often each point fired.
#[cfg(feature = "fault-points")]
pub fn disarm() -> std::collections::BTreeMap<&'static str, u64> {
    armed::disarm()
}
