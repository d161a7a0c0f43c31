//! Independent items shared among threads, one at a time.

use std::sync::atomic::{AtomicUsize, Ordering};

/// `f(0), …, f(n − 1)` on up to `threads` threads, each taking the next index when it
/// is done (so one slow item does not hold up a fixed share of the others), returned in
/// index order. A panic in `f` is resumed on the caller's thread.
pub fn map_indices<T: Send>(n: usize, threads: usize, f: impl Fn(usize) -> T + Sync) -> Vec<T> {
    if threads <= 1 || n <= 1 {
        return (0..n).map(f).collect();
    }
    let next = AtomicUsize::new(0);
    let mut done: Vec<(usize, T)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads.min(n))
            .map(|_| {
                scope.spawn(|| {
                    let mut out = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= n {
                            return out;
                        }
                        out.push((i, f(i)));
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect()
    });
    done.sort_by_key(|(i, _)| *i);
    done.into_iter().map(|(_, v)| v).collect()
}

#[cfg(test)]
mod tests {
    use super::map_indices;

    #[test]
    fn results_come_back_in_order_at_any_thread_count() {
        for threads in [0, 1, 2, 7] {
            let out = map_indices(20, threads, |i| i * i);
            assert_eq!(out, (0..20).map(|i| i * i).collect::<Vec<_>>(), "{threads} threads");
        }
        assert!(map_indices(0, 4, |i| i).is_empty());
    }
}
