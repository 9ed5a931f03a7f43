//! Which messages a long conversation keeps in the model's window: whole
//! exchanges leave from the start, found by bisection.

use std::sync::atomic::{AtomicBool, Ordering};

use crate::exit::Failure;
use crate::template::{Message, Role};

/// The first user message from `first` on whose window (it and all that
/// follows) renders within `budget` tokens, never past the last user
/// message, with that rendering: the window moves by whole exchanges (a
/// user's message, and the replies, calls and results that answer it).
///
/// A rendering only shrinks as its window starts later, so the start is
/// found by bisection, and no window longer than `budget` messages is ever
/// rendered (each message takes at least one token): a handful of
/// renderings of at most a context's worth, however long the saved
/// conversation. `cancel` (Ctrl-C, SIGTERM) is honoured between them.
pub fn fit_window(
    messages: &[Message],
    first: usize,
    budget: usize,
    render: impl Fn(&[Message]) -> anyhow::Result<Vec<u32>>,
    cancel: &AtomicBool,
) -> anyhow::Result<(usize, Vec<u32>)> {
    let mut starts: Vec<usize> = (first..messages.len())
        .filter(|&i| messages[i].role == Role::User)
        .collect();
    if starts.first() != Some(&first) {
        starts.insert(0, first);
    }
    let measure = |k: usize| -> anyhow::Result<Vec<u32>> {
        if cancel.load(Ordering::Relaxed) {
            return Err(
                Failure::Interrupted.err("stopped while fitting the conversation into the context")
            );
        }
        render(&messages[starts[k].min(messages.len())..])
    };
    // A window of more messages than `budget` cannot fit.
    let too_many = messages.len().saturating_sub(budget);
    let last = starts.len() - 1;
    let (mut lo, hi) = (starts.partition_point(|&i| i < too_many).min(last), last);
    // Most turns fit whole: one rendering, no search.
    let ids = measure(lo)?;
    if ids.len() <= budget || lo == hi {
        return Ok((starts[lo], ids));
    }
    let mut hi = hi;
    let mut fitting: Option<(usize, Vec<u32>)> = None;
    lo += 1;
    while lo < hi {
        let mid = (lo + hi) / 2;
        let ids = measure(mid)?;
        if ids.len() <= budget {
            hi = mid;
            fitting = Some((mid, ids));
        } else {
            lo = mid + 1;
        }
    }
    let ids = match fitting {
        Some((k, ids)) if k == lo => ids,
        _ => measure(lo)?,
    };
    Ok((starts[lo], ids))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conversation(n: usize) -> Vec<Message> {
        (0..n)
            .map(|i| {
                if i % 2 == 0 {
                    Message::user(format!("u{i}"))
                } else {
                    Message::assistant(format!("a{i}"))
                }
            })
            .collect()
    }

    /// Ten tokens per message, plus one for BOS.
    fn tokens(window: &[Message]) -> anyhow::Result<Vec<u32>> {
        Ok(vec![0; 1 + 10 * window.len()])
    }

    fn fit(m: &[Message], first: usize, budget: usize) -> usize {
        fit_window(m, first, budget, tokens, &AtomicBool::new(false))
            .unwrap()
            .0
    }

    #[test]
    fn the_window_drops_whole_exchanges_from_the_start() {
        let m = conversation(7);
        assert_eq!(fit(&m, 0, 71), 0);
        assert_eq!(fit(&m, 0, 70), 2);
        assert_eq!(fit(&m, 0, 30), 6);
        // The last user message always stays, even when it alone is too long.
        assert_eq!(fit(&m, 0, 5), 6);
        // The window never moves back.
        assert_eq!(fit(&m, 4, 1000), 4);
    }

    /// The bisection gives the first fitting start that the plain walk
    /// (try each exchange in turn) gives, for every size and budget.
    #[test]
    fn the_window_is_the_one_a_plain_walk_finds() {
        let walk = |m: &[Message], mut first: usize, budget: usize| loop {
            let next = (first + 1..m.len()).find(|&i| m[i].role == Role::User);
            match next {
                Some(next) if tokens(&m[first..]).unwrap().len() > budget => first = next,
                _ => return first,
            }
        };
        for n in 0..12 {
            let m = conversation(n);
            for first in (0..n.max(1)).step_by(2) {
                for budget in 0..130 {
                    assert_eq!(
                        fit(&m, first, budget),
                        walk(&m, first, budget),
                        "{n} {first} {budget}"
                    );
                }
            }
        }
    }

    /// A saved conversation of 20,000 messages is fitted with a handful of
    /// renderings, none longer than the budget allows, and Ctrl-C stops it.
    #[test]
    fn long_conversations_fit_in_few_small_renderings() {
        let m = conversation(20_001);
        let rendered = std::cell::Cell::new(0);
        let counting = |w: &[Message]| {
            rendered.set(rendered.get() + w.len());
            tokens(w)
        };
        let (first, ids) = fit_window(&m, 0, 4096, counting, &AtomicBool::new(false)).unwrap();
        assert_eq!((first, ids.len()), (20_001 - 409, 4091));
        assert!(
            rendered.get() < 20 * 4096,
            "{} messages rendered",
            rendered.get()
        );
        let stopped = fit_window(&m, 0, 4096, tokens, &AtomicBool::new(true)).unwrap_err();
        assert_eq!(crate::exit::code_for(&stopped), 130);
    }
}
