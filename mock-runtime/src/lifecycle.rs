//! How each flavour comes up: when its port opens and what its health says meanwhile, as
//! the real runtime does (`docs/runtimes.md`, "While loading"). Pure: a plan of stages with
//! their offsets from process start; the server walks it.

use std::time::Duration;

use crate::flavor::Flavor;

/// What the listening side looks like during a stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Port not bound: connections are refused.
    Closed,
    /// Port bound but never served: connections are accepted by the kernel and hang (vLLM
    /// binds its socket before uvicorn serves it).
    BoundSilent,
    /// Serving; health says "loading" the flavour's way.
    Loading,
    /// Serving and ready.
    Ready,
}

/// The stages a flavour goes through with a `startup` delay; with `hang` it never reaches
/// [`Stage::Ready`]. Each entry starts at its offset and lasts until the next.
pub fn startup_plan(flavor: Flavor, startup: Duration, hang: bool) -> Vec<(Duration, Stage)> {
    let zero = Duration::ZERO;
    let mut plan = match flavor {
        // Port closed while loading; a hung vLLM has its socket bound but not served.
        Flavor::Vllm if hang => vec![(zero, Stage::Closed), (startup, Stage::BoundSilent)],
        // The launcher / LLM object starts the HTTP server only after the model is loaded.
        Flavor::Vllm | Flavor::Tgi | Flavor::Trtllm => vec![(zero, Stage::Closed)],
        // Port closed while weights load, then 503 during warm-up.
        Flavor::Sglang => vec![(zero, Stage::Closed), (startup / 2, Stage::Loading)],
        // Port open at once; health answers "loading" (llama.cpp 503, Triton ready 400, Ollama
        // has the model loaded lazily).
        Flavor::Triton | Flavor::LlamaCpp | Flavor::Ollama | Flavor::Openai => vec![(zero, Stage::Loading)],
    };
    if !hang {
        plan.push((startup, Stage::Ready));
    }
    // A stage that lasts no time is skipped: with no startup delay nothing ever answers
    // "loading".
    let mut kept: Vec<(Duration, Stage)> = Vec::with_capacity(plan.len());
    for (offset, stage) in plan {
        if kept.last().is_some_and(|(last, _)| *last == offset) {
            kept.pop();
        }
        kept.push((offset, stage));
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;
    use Stage::*;

    fn check(flavor: Flavor, hang: bool, expected: &[(u64, Stage)]) {
        let got = startup_plan(flavor, Duration::from_millis(1000), hang);
        let expected: Vec<(Duration, Stage)> = expected
            .iter()
            .map(|(ms, s)| (Duration::from_millis(*ms), *s))
            .collect();
        assert_eq!(got, expected, "{flavor:?} hang={hang}");
    }

    #[test]
    fn no_startup_delay_means_ready_at_once() {
        for flavor in [
            Flavor::Vllm,
            Flavor::Sglang,
            Flavor::LlamaCpp,
            Flavor::Triton,
            Flavor::Ollama,
        ] {
            assert_eq!(
                startup_plan(flavor, Duration::ZERO, false),
                vec![(Duration::ZERO, Ready)],
                "{flavor:?}"
            );
        }
        assert_eq!(
            startup_plan(Flavor::Vllm, Duration::ZERO, true),
            vec![(Duration::ZERO, BoundSilent)]
        );
        assert_eq!(
            startup_plan(Flavor::Tgi, Duration::ZERO, true),
            vec![(Duration::ZERO, Closed)]
        );
        assert_eq!(
            startup_plan(Flavor::LlamaCpp, Duration::ZERO, true),
            vec![(Duration::ZERO, Loading)]
        );
    }

    #[test]
    fn plans_per_flavour() {
        check(Flavor::Vllm, false, &[(0, Closed), (1000, Ready)]);
        check(Flavor::Vllm, true, &[(0, Closed), (1000, BoundSilent)]);
        check(Flavor::Tgi, false, &[(0, Closed), (1000, Ready)]);
        check(Flavor::Tgi, true, &[(0, Closed)]);
        check(Flavor::Trtllm, true, &[(0, Closed)]);
        check(Flavor::Sglang, false, &[(0, Closed), (500, Loading), (1000, Ready)]);
        check(Flavor::Sglang, true, &[(0, Closed), (500, Loading)]);
        check(Flavor::LlamaCpp, false, &[(0, Loading), (1000, Ready)]);
        check(Flavor::Triton, true, &[(0, Loading)]);
        check(Flavor::Ollama, false, &[(0, Loading), (1000, Ready)]);
        check(Flavor::Openai, true, &[(0, Loading)]);
    }
}
