//! Choosing a server: round robin, or the less busy of two drawn at random
//! (`least_requests`), skipping servers that are down or already tried.

/// The first candidate, in round-robin order from `start`, that `usable`
/// accepts. `usable` may claim the server (a trial request), so it is asked
/// only about servers that would be taken.
pub fn round_robin(n: usize, start: usize, tried: &[bool], mut usable: impl FnMut(usize) -> bool) -> Option<usize> {
    (0..n).map(|i| (start + i) % n).find(|&i| !tried.get(i).copied().unwrap_or(false) && usable(i))
}

/// Two distinct indices below `n` (`n` ≥ 2) from one random number.
pub fn two_of(n: usize, random: u64) -> (usize, usize) {
    let n64 = n as u64;
    let a = random % n64;
    let b = (a + 1 + (random >> 32) % (n64 - 1).max(1)) % n64;
    (a as usize, b as usize)
}

/// splitmix64: a well-spread number from a counter, so no random number
/// generator (and no lock) sits on the request path.
pub fn mix(counter: u64) -> u64 {
    let mut z = counter.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Power of two choices: of `a` and `b`, the one with fewer requests in
/// flight first, then the other; `None` when neither is usable.
pub fn least_of_two(
    (a, b): (usize, usize),
    tried: &[bool],
    load: impl Fn(usize) -> u32,
    mut usable: impl FnMut(usize) -> bool,
) -> Option<usize> {
    let (first, second) = if load(b) < load(a) { (b, a) } else { (a, b) };
    [first, second].into_iter().find(|&i| !tried.get(i).copied().unwrap_or(false) && usable(i))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_robin_starts_at_start_and_skips_unusable_and_tried() {
        assert_eq!(round_robin(3, 1, &[], |_| true), Some(1));
        assert_eq!(round_robin(3, 4, &[], |_| true), Some(1));
        assert_eq!(round_robin(3, 1, &[], |i| i != 1), Some(2));
        assert_eq!(round_robin(3, 2, &[false, false, true], |_| true), Some(0));
        assert_eq!(round_robin(3, 0, &[], |_| false), None);
        assert_eq!(round_robin(0, 0, &[], |_| true), None);
    }

    #[test]
    fn round_robin_asks_only_until_it_finds_one() {
        let mut asked = Vec::new();
        let got = round_robin(4, 1, &[false, false, true, false], |i| {
            asked.push(i);
            i == 3
        });
        assert_eq!(got, Some(3));
        assert_eq!(asked, vec![1, 3], "a tried server is never asked (asking may claim a trial)");
    }

    #[test]
    fn two_of_gives_distinct_indices_in_range() {
        for n in 2..9usize {
            for r in 0..2000u64 {
                let (a, b) = two_of(n, mix(r));
                assert!(a < n && b < n && a != b, "n={n} r={r}: {a} {b}");
            }
        }
    }

    #[test]
    fn two_of_reaches_every_pair_member() {
        let mut seen = [0usize; 5];
        for r in 0..5000u64 {
            let (a, b) = two_of(5, mix(r));
            seen[a] += 1;
            seen[b] += 1;
        }
        assert!(seen.iter().all(|&c| c > 1000), "{seen:?}");
    }

    #[test]
    fn least_of_two_prefers_the_idle_one() {
        let load = |i: usize| [5u32, 0][i];
        assert_eq!(least_of_two((0, 1), &[], load, |_| true), Some(1));
        assert_eq!(least_of_two((1, 0), &[], load, |_| true), Some(1));
        assert_eq!(least_of_two((0, 1), &[], load, |i| i == 0), Some(0));
        assert_eq!(least_of_two((0, 1), &[false, true], load, |_| true), Some(0));
        assert_eq!(least_of_two((0, 1), &[], load, |_| false), None);
    }
}
