//! Engine benchmarks: planning large graphs, and applying under simulated latency.
//!
//! A custom harness (`harness = false`, run with `cargo bench --bench engine`). Stdout
//! carries exactly one `BENCH <name> <value> <unit>` line per figure, for scripts to
//! parse; everything else (phase breakdowns, sanity numbers) goes to stderr.
//!
//! The engine is driven only through its public API, with the in-memory
//! [`TestProvider`], so no cloud SDK is involved and the numbers measure the engine
//! itself.

use std::time::{Duration, Instant};

use std::sync::Arc;

use cairn_sdk::events::{Event, Outcome, Reconciler, ReconcilerOptions};
use cairn_sdk::schema::{Property, ResourceType};
use cairn_state::{MemoryStore, Store};
use cairn_sdk::testing::{Op, TestProvider};
use cairn_sdk::{Cx, DynamicResource, Graph, Handle, Input, Plan, ProgramResult, Props, Resource, ResourceState, Stack, StackState, Urn};
use serde::{Deserialize, Serialize};
use serde_json::Value;

const STACK: &str = "bench";

/// Level-0 resources: nothing to depend on.
static ROOT: ResourceType = ResourceType::new(
    "bench:index:Root",
    &[
        Property::input("name").required().forces_replacement(),
        Property::input("size"),
        Property::input("tags"),
        Property::output("id"),
    ],
);

/// Everything else: a required `parent` reference makes chains, extra references hide
/// in the `tags` list next to literals (so list resolution is exercised too).
static NODE: ResourceType = ResourceType::new(
    "bench:index:Node",
    &[
        Property::input("name").required().forces_replacement(),
        Property::input("parent").required().forces_replacement(),
        Property::input("size"),
        Property::input("tags"),
        Property::output("id"),
    ],
);

/// The user state: it alone decides which graph the program declares.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
enum BenchState {
    #[default]
    Empty,
    /// `n` resources in chains of depth 10, with long-range and hub references.
    Mixed { n: usize },
    /// `levels` x `width` resources, each below level 0 depending on 1-3 of the level
    /// above: a DAG whose critical path is exactly `levels` calls.
    Layered { levels: usize, width: usize },
}

/// Knuth's MMIX LCG: deterministic across runs and platforms, no `rand` crate.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        // The low bits of an LCG are weak; the high ones are fine for picking indices.
        self.0 >> 33
    }

    /// Uniform enough in `0..n` for picking graph edges.
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// One resource of a generated graph. References are indices of earlier resources, so
/// the program can turn them into outputs of handles it already holds.
struct Spec {
    index: usize,
    level: usize,
    parent: Option<usize>,
    peers: [usize; 2],
    peer_count: usize,
}

impl Spec {
    fn ty(&self) -> &'static ResourceType {
        if self.parent.is_some() {
            &NODE
        } else {
            &ROOT
        }
    }

    fn logical_name(&self) -> String {
        format!("r{:06}", self.index)
    }

    fn name(&self) -> String {
        format!("bench-{:06}", self.index)
    }

    fn size(&self) -> i64 {
        (self.index as i64 * 37) % 500 + 1
    }

    fn tier(&self) -> String {
        format!("tier-{}", self.level)
    }

    fn peers(&self) -> &[usize] {
        &self.peers[..self.peer_count]
    }

    /// Records an extra reference unless it repeats one already made.
    fn add_peer(&mut self, j: usize) {
        if Some(j) != self.parent && !self.peers().contains(&j) {
            self.peers[self.peer_count] = j;
            self.peer_count += 1;
        }
    }
}

/// The resources `state` declares, in declaration order. Both the program and the
/// hand-built state below read it, so they cannot disagree about the graph.
fn specs(state: BenchState) -> impl Iterator<Item = Spec> {
    let mut rng = Lcg(0x5eed);
    let total = match state {
        BenchState::Empty => 0,
        BenchState::Mixed { n } => n,
        BenchState::Layered { levels, width } => levels * width,
    };
    (0..total).map(move |i| match state {
        BenchState::Empty => unreachable!(),
        BenchState::Mixed { .. } => {
            // Resource 10c + l is link l of chain c. Links past the first hang off the
            // previous one (depth) and reference up to two lower links of any earlier
            // chain (width); a quarter of those go to the first few chains, which makes
            // hubs with a large fan-out. Lower levels only, so the depth stays 10.
            const DEPTH: usize = 10;
            let (chain, level) = (i / DEPTH, i % DEPTH);
            let mut spec = Spec { index: i, level, parent: None, peers: [0; 2], peer_count: 0 };
            if level > 0 {
                spec.parent = Some(i - 1);
                for _ in 0..rng.below(3) {
                    let c = if rng.below(4) == 0 { rng.below(chain.min(3) + 1) } else { rng.below(chain + 1) };
                    spec.add_peer(c * DEPTH + rng.below(level));
                }
            }
            spec
        }
        BenchState::Layered { width, .. } => {
            let level = i / width;
            let mut spec = Spec { index: i, level, parent: None, peers: [0; 2], peer_count: 0 };
            if level > 0 {
                let above = (level - 1) * width;
                spec.parent = Some(above + rng.below(width));
                for _ in 0..rng.below(3) {
                    spec.add_peer(above + rng.below(width));
                }
            }
            spec
        }
    })
}

/// The shape of a generated graph, on stderr, so a reader knows what was measured.
fn describe(state: BenchState) {
    let (mut resources, mut references) = (0, 0);
    let mut fan_out: Vec<usize> = Vec::new();
    for spec in specs(state) {
        resources += 1;
        fan_out.push(0);
        for &d in spec.parent.iter().chain(spec.peers()) {
            references += 1;
            fan_out[d] += 1;
        }
    }
    let roots = fan_out.len() - specs(state).filter(|s| s.parent.is_some()).count();
    eprintln!(
        "{state:?}: {resources} resources ({roots} roots), {references} references, most dependents of one resource {}",
        fan_out.iter().max().unwrap_or(&0)
    );
}

/// Declares every resource of `state`, handing each to `add`. Generic over `add` so the
/// same code feeds a real [`Cx`] and, for the phase breakdown, a bare `Vec<Decl>`.
fn declare(state: BenchState, mut add: impl FnMut(DynamicResource) -> Handle) {
    // Handles are what a real program keeps to wire outputs into later inputs.
    let mut handles: Vec<Handle> = Vec::new();
    for spec in specs(state) {
        let mut tags: Vec<Input<String>> = Vec::with_capacity(1 + spec.peer_count);
        tags.push(spec.tier().into());
        tags.extend(spec.peers().iter().map(|&p| Input::from(handles[p].output::<String>("id"))));
        let mut r = DynamicResource::new(spec.ty(), spec.logical_name())
            .set("name", spec.name())
            .set("size", spec.size())
            .set("tags", Input::<Vec<String>>::list(tags));
        if let Some(p) = spec.parent {
            r = r.set("parent", handles[p].output::<String>("id"));
        }
        handles.push(add(r));
    }
}

fn program(cx: &mut Cx, state: &BenchState) -> ProgramResult {
    declare(*state, |r| cx.add(r));
    Ok(())
}

fn stack(provider: TestProvider) -> Stack<BenchState> {
    Stack::<BenchState>::new(STACK).program(program).provider(provider)
}

/// The state a successful `up` of `shape` on a fresh [`TestProvider`] leaves, built
/// directly. Not for speed (an `up` of 100k takes a few seconds) but for memory: it
/// would leave the TestProvider's copy of every resource and the apply's own peak
/// (about 610 MiB at 100k) in the process's high-water mark, which is meant to measure
/// the plan. `plan_10k` checks with [`check_built_state`] that the two agree.
fn built_state(stack: &Stack<BenchState>, shape: BenchState) -> StackState {
    let mut state = stack.new_state();
    state.serial = 1;
    state.user_state = serde_json::to_value(shape).expect("the bench state serializes");
    let mut urns: Vec<Urn> = Vec::new();
    let mut ids: Vec<String> = Vec::new();
    for spec in specs(shape) {
        let name = spec.logical_name();
        let urn = Urn::new(STACK, spec.ty().token, &name);
        // TestProvider ids are `<name>-<creates of that URN>`.
        let id = format!("{name}-1");
        let mut tags = vec![Value::from(spec.tier())];
        tags.extend(spec.peers().iter().map(|&p| Value::from(ids[p].as_str())));
        let mut inputs = Props::new();
        inputs.insert("name", Value::from(spec.name()));
        inputs.insert("size", Value::from(spec.size()));
        inputs.insert("tags", Value::Array(tags));
        let mut dependencies: Vec<Urn> = spec.peers().iter().map(|&p| urns[p].clone()).collect();
        if let Some(p) = spec.parent {
            inputs.insert("parent", Value::from(ids[p].as_str()));
            dependencies.push(urns[p].clone());
        }
        // TestProvider's outputs are the id alone (with no `with_outputs`).
        let mut outputs = Props::new();
        outputs.insert("id", Value::from(id.as_str()));
        state.resources.push(ResourceState {
            urn: urn.clone(),
            ty: spec.ty().token.to_owned(),
            id: id.clone(),
            inputs,
            outputs,
            dependencies,
            options: Default::default(),
            pending_delete: false,
        });
        urns.push(urn);
        ids.push(id);
    }
    // An apply writes state in its plan's order, which is the graph's.
    let graph = stack.render(&shape).expect("a valid graph");
    let position: std::collections::HashMap<&Urn, usize> = graph.resources().enumerate().map(|(i, (urn, _))| (urn, i)).collect();
    state.resources.sort_by_key(|r| position[&r.urn]);
    drop(position);
    drop(graph);
    state
}

/// Asserts that [`built_state`] matches what `up` really stores, resources in the same
/// order, up to the order of each one's dependencies (which no plan depends on).
fn check_built_state(real: &StackState, built: &StackState) {
    fn canonical(state: &StackState) -> Vec<ResourceState> {
        let mut resources = state.resources.clone();
        for r in &mut resources {
            r.dependencies.sort();
        }
        resources
    }
    assert_eq!(real.serial, built.serial);
    assert_eq!(real.user_state, built.user_state);
    assert!(canonical(real) == canonical(built), "the hand-built state differs from what up stores (or is in another order)");
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().enable_time().build().expect("a tokio runtime")
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn bench(name: &str, value: f64, unit: &str) {
    // A ratio's goal is set to the hundredth (1.03): one more digit shows on which side.
    let digits = if unit == "x" { 3 } else { 2 };
    println!("BENCH {name} {value:.digits$} {unit}");
}

/// An empty directory for a file store, under the system's temporary directory and
/// named for this process; the caller removes it when done.
fn scratch_dir(purpose: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("cairn-bench-{purpose}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// The machine's CPU time counters (Linux, /proc/stat): for how much of it the host of a
/// virtual machine ran something else ("steal"), which shows up as latency no code can
/// remove.
struct CpuTicks(Option<(u64, u64)>);

impl CpuTicks {
    fn now() -> CpuTicks {
        let read = || -> Option<(u64, u64)> {
            let stat = std::fs::read_to_string("/proc/stat").ok()?;
            let fields: Vec<u64> = stat.lines().next()?.split_whitespace().skip(1).map(|f| f.parse().ok()).collect::<Option<_>>()?;
            // user nice system idle iowait irq softirq steal, then guest times that
            // are already counted in user and nice.
            Some((*fields.get(7)?, fields.iter().take(8).sum()))
        };
        CpuTicks(read())
    }

    /// The share of CPU time stolen since `self` was read, in percent.
    fn steal_percent(&self) -> Option<f64> {
        let ((steal0, total0), (steal1, total1)) = (self.0?, CpuTicks::now().0?);
        let total = total1.checked_sub(total0).filter(|&t| t > 0)?;
        Some(100.0 * steal1.saturating_sub(steal0) as f64 / total as f64)
    }
}

/// The process's peak resident set size (VmHWM), in MiB.
fn peak_rss_mb() -> f64 {
    proc_status_mb("VmHWM:")
}

/// Starts counting the peak RSS again from the current RSS (Linux's `clear_refs`).
fn reset_peak_rss() {
    std::fs::write("/proc/self/clear_refs", "5").expect("/proc/self/clear_refs (Linux only)");
}

fn file_mb(path: &std::path::Path) -> f64 {
    std::fs::metadata(path).map(|m| m.len() as f64 / 1048576.0).unwrap_or(0.0)
}

/// The process's resident set size now (VmRSS), in MiB.
fn rss_mb() -> f64 {
    proc_status_mb("VmRSS:")
}

/// The CPU time this process has used, all threads, in seconds (Linux's clock ticks of
/// 10 ms). Time the host stole is not in it, unlike in wall time.
fn process_cpu_s() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat (Linux only)");
    // The fields after the command name, which is in parentheses: utime and stime are
    // the 12th and 13th.
    let rest = &stat[stat.rfind(')').expect("a command name") + 1..];
    let ticks: Vec<f64> = rest.split_whitespace().skip(11).take(2).map(|f| f.parse().expect("a tick count")).collect();
    ticks.iter().sum::<f64>() / 100.0
}

/// A `kB` field of /proc/self/status, in MiB.
fn proc_status_mb(field: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status (Linux only)");
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} line in /proc/self/status"));
    kb / 1024.0
}

/// Median wall time of `runs` previews of `shape` against `state`, each checked with
/// `check` so a plan that does the wrong thing cannot look fast.
fn time_preview(stack: &Stack<BenchState>, shape: BenchState, state: &StackState, runs: usize, check: impl Fn(&Plan)) -> f64 {
    let times: Vec<f64> = (0..runs)
        .map(|_| {
            let t = Instant::now();
            let plan = stack.preview(&shape, state).expect("the preview succeeds");
            let elapsed = ms(t.elapsed());
            check(&plan);
            // Dropping the plan is part of a real preview's cost, but not what we time.
            drop(plan);
            elapsed
        })
        .collect();
    let shown: Vec<String> = times.iter().map(|t| format!("{t:.1}")).collect();
    eprintln!("  preview {shape:?} against {} resources: runs {} ms", state.resources.len(), shown.join(", "));
    median(times)
}

/// Where a preview's time goes, on stderr (median of 3 each): the program alone,
/// graph validation, the whole render (which adds the providers' checks), the diff, and
/// freeing the graph and plan (a preview frees its graph before it returns).
fn phase_breakdown(stack: &Stack<BenchState>, shape: BenchState, state: &StackState) {
    let mut phases: [Vec<f64>; 6] = Default::default();
    let mut changes = 0;
    for _ in 0..3 {
        let t = Instant::now();
        let mut cx = Cx::new(STACK);
        declare(shape, |r| cx.add(r));
        phases[0].push(ms(t.elapsed()));
        drop(cx);

        let mut decls = Vec::new();
        declare(shape, |r| {
            let handle = Handle::new(Urn::new(STACK, r.decl().resource_type().token, r.decl().name()));
            decls.push(r.into_decl());
            handle
        });
        let t = Instant::now();
        let graph = Graph::build(STACK, decls).expect("a valid graph");
        phases[1].push(ms(t.elapsed()));
        drop(graph);

        let t = Instant::now();
        let graph = stack.render(&shape).expect("a valid graph");
        phases[2].push(ms(t.elapsed()));
        let user_state = serde_json::to_value(shape).expect("the bench state serializes");
        let t = Instant::now();
        let plan = cairn_sdk::plan::plan(&graph, state, stack.providers(), user_state).expect("a plan");
        phases[3].push(ms(t.elapsed()));
        changes = plan.summary.changes();
        let t = Instant::now();
        drop(graph);
        phases[4].push(ms(t.elapsed()));
        let t = Instant::now();
        drop(plan);
        phases[5].push(ms(t.elapsed()));
    }
    let [program, build, render, plan, drop_graph, drop_plan] = phases.map(median);
    eprintln!(
        "  phases {shape:?}, {changes} changes: program {program:.1} ms, Graph::build {build:.1} ms, \
         render {render:.1} ms (the rest, mostly provider checks, ~{:.1} ms), plan {plan:.1} ms, \
         drop graph {drop_graph:.1} ms, drop plan {drop_plan:.1} ms",
        (render - program - build).max(0.0)
    );
}

/// Plans 100k unchanged resources, as a `preview` process does: the state read from
/// its file (a snapshot in the file store's format), then the previews. Runs first, and
/// the peak RSS is counted from the read on, so it is this workload's alone. Returns
/// the no-change plan's median time, in ms.
fn plan_100k() -> f64 {
    let shape = BenchState::Mixed { n: 100_000 };
    describe(shape);
    let stack = stack(TestProvider::new("bench"));
    let t = Instant::now();
    let dir = scratch_dir("plan-100k");
    std::fs::create_dir_all(&dir).expect("a scratch directory");
    let snapshot = dir.join("state.json");
    {
        let state = built_state(&stack, shape);
        let file = std::io::BufWriter::new(std::fs::File::create(&snapshot).expect("a temporary file"));
        serde_json::to_writer(file, &state).expect("the state is written");
    }
    eprintln!("100k: state built and written in {:.0} ms ({:.0} MiB)", ms(t.elapsed()), file_mb(&snapshot));
    reset_peak_rss();
    let t = Instant::now();
    // As the file store reads a snapshot.
    let state: StackState = {
        let bytes = std::fs::read(&snapshot).expect("the state is read");
        serde_json::from_slice(&bytes).expect("the state parses")
    };
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!("100k: state read in {:.0} ms, RSS {:.0} MiB (peak {:.0} MiB)", ms(t.elapsed()), rss_mb(), peak_rss_mb());
    let nochange = time_preview(&stack, shape, &state, 3, |plan| {
        assert!(!plan.has_changes(), "a no-change plan must report no changes: {:?}", plan.summary);
        assert_eq!(plan.summary.same, 100_000);
    });
    bench("plan_nochange_100k_ms", nochange, "ms");
    bench("plan_100k_peak_rss_mb", peak_rss_mb(), "MiB");
    phase_breakdown(&stack, shape, &state);
    nochange
}

/// Plans 10k resources against the state a real `up` left, and against no state.
/// Returns the no-change plan's median time, in ms.
fn plan_10k(rt: &tokio::runtime::Runtime) -> f64 {
    let shape = BenchState::Mixed { n: 10_000 };
    describe(shape);
    let stack = stack(TestProvider::new("bench"));
    let t = Instant::now();
    let report = rt
        .block_on(async { stack.in_memory_session().await.expect("an in-memory session").up(&shape).await })
        .expect("the up succeeds");
    assert!(report.succeeded() && report.summary.create == 10_000, "up: {:?}", report.summary);
    eprintln!("10k: up with zero latency in {:.0} ms", ms(t.elapsed()));
    let state = report.state;
    check_built_state(&state, &built_state(&stack, shape));

    let nochange = time_preview(&stack, shape, &state, 5, |plan| {
        assert!(!plan.has_changes(), "a no-change plan must report no changes: {:?}", plan.summary);
        assert_eq!(plan.summary.same, 10_000);
    });
    bench("plan_nochange_10k_ms", nochange, "ms");

    let empty = stack.new_state();
    let create = time_preview(&stack, shape, &empty, 5, |plan| {
        assert_eq!(plan.summary.create, 10_000);
        assert_eq!(plan.summary.changes(), 10_000);
    });
    bench("plan_create_10k_ms", create, "ms");
    phase_breakdown(&stack, shape, &state);
    phase_breakdown(&stack, shape, &empty);
    nochange
}

const LATENCY: Duration = Duration::from_millis(20);
const LEVELS: usize = 10;
const WIDTH: usize = 100;

/// Median wall time of applying the 10 x 100 layered DAG from empty state, with every
/// provider call taking [`LATENCY`], at `parallelism`.
fn time_apply(rt: &tokio::runtime::Runtime, parallelism: usize) -> Duration {
    let mut times: Vec<Duration> = (0..3)
        .map(|_| {
            // The latency is exact (the test provider's own timer), so the ratio measures
            // the scheduler, not tokio's timer rounding each 20 ms sleep up to the next
            // tick, nor the OS waking a sleeping thread late.
            let provider = TestProvider::new("bench").with_latency(LATENCY).with_precise_latency();
            let (plan, report, wall) = apply_layered(rt, &provider, parallelism);
            // A provider call that takes longer than LATENCY is the timer's doing, not
            // the scheduler's: telling them apart says where a ratio above 1 comes from.
            let calls: Vec<f64> = report.steps.iter().map(|s| ms(s.elapsed)).collect();
            let mean_call = calls.iter().sum::<f64>() / calls.len() as f64;
            let limit = if parallelism == usize::MAX { "unlimited".to_owned() } else { parallelism.to_string() };
            eprintln!(
                "  apply, parallelism {limit}: {:.1} ms, most calls in flight {}, provider call mean {mean_call:.2} ms, max {:.2} ms",
                ms(wall),
                provider.max_concurrency(),
                calls.iter().copied().fold(0.0, f64::max),
            );
            if parallelism == usize::MAX {
                let gaps = start_gaps_us(&plan, &report, &provider);
                eprintln!(
                    "    a call's start after its last dependency's end: p50 {:.0} us, p90 {:.0} us, max {:.0} us",
                    percentile(&gaps, 50),
                    percentile(&gaps, 90),
                    percentile(&gaps, 100)
                );
            }
            wall
        })
        .collect();
    times.sort();
    times[times.len() / 2]
}

/// Per step with dependencies, in microseconds: how long after its last dependency's
/// call ended its own call began (each call's start as the provider recorded it, its end
/// that start plus the step's elapsed time). With no limit on parallelism this is the
/// scheduler's whole share of the critical path: the rest is the calls themselves.
fn start_gaps_us(plan: &Plan, report: &cairn_sdk::ApplyReport, provider: &TestProvider) -> Vec<f64> {
    use std::collections::HashMap;
    let started: HashMap<Urn, tokio::time::Instant> = provider.calls().into_iter().filter(|c| c.op == Op::Create).map(|c| (c.urn, c.at)).collect();
    let ended: HashMap<&Urn, tokio::time::Instant> = report.steps.iter().map(|s| (&s.urn, started[&s.urn] + s.elapsed)).collect();
    plan.changes
        .iter()
        .filter_map(|c| {
            let last = c.dependencies.as_deref()?.iter().map(|d| ended[d]).max()?;
            Some(started[&c.urn].saturating_duration_since(last).as_secs_f64() * 1e6)
        })
        .collect()
}

/// The `p`th percentile of `xs` (0 to 100), by rank.
fn percentile(xs: &[f64], p: usize) -> f64 {
    let mut xs = xs.to_vec();
    xs.sort_by(f64::total_cmp);
    xs[(xs.len() - 1) * p / 100]
}

/// The engine's own time per step: the median wall time of applying the layered DAG
/// with no latency at all, over its 1,000 steps, in microseconds. On the critical path,
/// the steps of one level end at about the same time and the apply takes each ending
/// (and starts what it unblocks) one after another: about `WIDTH` times this per level.
fn apply_step_us(rt: &tokio::runtime::Runtime, runs: usize) -> f64 {
    let times = (0..runs)
        .map(|_| {
            // A provider of its own each time, as in `time_apply`: its fake cloud empty.
            let (_, _, wall) = apply_layered(rt, &TestProvider::new("bench"), usize::MAX);
            wall.as_secs_f64() * 1e6 / (LEVELS * WIDTH) as f64
        })
        .collect();
    median(times)
}

/// Applies the 10 x 100 layered DAG from empty state through `provider` at
/// `parallelism`, with no journal (the engine's apply alone), and checks that every
/// resource was created with one call. The plan, the report and the apply's wall time.
fn apply_layered(rt: &tokio::runtime::Runtime, provider: &TestProvider, parallelism: usize) -> (Plan, cairn_sdk::ApplyReport, Duration) {
    let shape = BenchState::Layered { levels: LEVELS, width: WIDTH };
    let stack = stack(provider.clone()).parallelism(parallelism);
    let state = stack.new_state();
    let plan = stack.preview(&shape, &state).expect("the preview succeeds");
    let options = cairn_sdk::ApplyOptions { parallelism, progress: None };
    let journal = Arc::new(cairn_state::NoJournal);
    let t = Instant::now();
    let report = rt.block_on(cairn_sdk::apply::apply(&plan, &state, stack.providers(), &options, journal)).expect("the apply runs");
    let wall = t.elapsed();
    assert!(report.succeeded(), "apply failed: {:?}", report.failures().next());
    assert_eq!(report.summary.create, LEVELS * WIDTH);
    assert_eq!(provider.calls_of(Op::Create).len(), LEVELS * WIDTH);
    (plan, report, wall)
}

/// Bytes the file store writes while an `up` creates 10k resources (lock, snapshots,
/// journal), over the size of the snapshot it ends with: the cost of journaling. A store
/// that rewrote the snapshot after every step would be at about N/2 = 5000.
fn state_bytes_ratio(rt: &tokio::runtime::Runtime) -> f64 {
    let dir = scratch_dir("state");
    let store = std::sync::Arc::new(cairn_state::FileStore::new(&dir));
    let stack = stack(TestProvider::new("bench"));
    let shape = BenchState::Mixed { n: 10_000 };
    rt.block_on(async {
        let mut session = stack.lock(store.clone(), "up").await.expect("the stack locks");
        let report = session.up(&shape).await.expect("the up runs");
        assert!(report.succeeded() && report.summary.create == 10_000);
        session.close().await.expect("the lock is released");
    });
    let snapshot = std::fs::metadata(dir.join(STACK).join("state.json")).expect("a snapshot was written").len();
    let written = cairn_state::Store::bytes_written(&*store);
    eprintln!("  state: {written} bytes written for a {snapshot}-byte snapshot of 10000 resources");
    let _ = std::fs::remove_dir_all(&dir);
    written as f64 / snapshot as f64
}

/// How long `LEVELS` calls in a row to the benchmark's provider take on `rt`: the best
/// any apply of the layered DAG can do with it, its timer's lateness included.
fn provider_floor(rt: &tokio::runtime::Runtime) -> Duration {
    use cairn_sdk::Provider;
    let provider = TestProvider::new("bench").with_latency(LATENCY).with_precise_latency();
    let t = Instant::now();
    rt.block_on(async {
        for i in 0..LEVELS {
            let urn = Urn::new(STACK, ROOT.token, &format!("floor-{i}"));
            provider.create(&urn, &Props::new()).await.expect("the test provider creates");
        }
    });
    t.elapsed()
}

/// The user state of the event benchmarks: `n` independent resources; `bump` sizes the
/// first one, so an event that changes it causes exactly one update.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
struct Flat {
    n: usize,
    bump: i64,
}

fn flat_stack(provider: TestProvider) -> Stack<Flat> {
    Stack::<Flat>::new("events").provider(provider).program(|cx, s: &Flat| {
        for i in 0..s.n {
            let size = if i == 0 { s.bump } else { i as i64 };
            cx.add(DynamicResource::new(&ROOT, format!("r{i:06}")).set("name", format!("flat-{i}")).set("size", size));
        }
        Ok(())
    })
    .on_event("bump", |e: &Event, s: &mut Flat| {
        s.bump = e.field("to")?;
        Ok(())
    })
}

/// Time from handing an event to a running reconciler to the provider's first call, on a
/// 1,000-resource stack in `store`: handlers, recording S, render, diff, and the apply's
/// start. p50 and p99 over `count` events, microseconds; and the CPU time each event
/// cost in all (its whole apply, and the benchmark's own waiting, included).
fn event_to_first_call(rt: &tokio::runtime::Runtime, store: Arc<dyn Store>, count: i64) -> (f64, f64, f64) {
    rt.block_on(async {
        let provider = TestProvider::new("bench");
        let stack = flat_stack(provider.clone());
        let mut session = stack.lock(store, "bench").await.expect("the lock");
        let first = Flat { n: 1000, bump: 0 };
        assert!(session.up(&first).await.expect("the first up").succeeded());
        let (reconciler, events) = Reconciler::new(session, ReconcilerOptions::default()).expect("a reconciler");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        // As `watch` runs it: on a thread of its own.
        let task = reconciler.spawn(async {
            let _ = stopped.await;
        });
        // Events are sent from a task on the runtime, as sources (the webhook's handler,
        // the queue poller, the schedule) send them.
        let cpu = process_cpu_s();
        let source = tokio::spawn(async move {
            let mut samples = Vec::new();
            for i in 1..=count {
                provider.clear_calls();
                let sent = tokio::time::Instant::now();
                let outcome = events.send(Event::new("bump", serde_json::json!({ "to": i }))).await.expect("recorded");
                assert_eq!(outcome, Outcome::Accepted);
                // The apply runs after the receipt. Wait for it to finish, so each event finds
                // the reconciler idle, then read when its call was made. The wait sleeps: a
                // spinning observer would take one of the machine's two cores from the
                // reconciler it measures.
                while events.metrics().applies_of("succeeded") < i as u64 {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                let at = provider.calls().into_iter().find(|c| c.op == Op::Update).expect("the apply's call").at;
                samples.push((at - sent).as_secs_f64() * 1e6);
            }
            samples
        });
        let mut samples = source.await.expect("the source task");
        let cpu_per_event_us = (process_cpu_s() - cpu) * 1e6 / samples.len() as f64;
        let _ = stop.send(());
        task.finished().await.expect("the reconciler").close().await.expect("unlock");
        samples.sort_by(f64::total_cmp);
        (samples[samples.len() / 2], samples[samples.len() * 99 / 100], cpu_per_event_us)
    })
}

/// 10,000 events in a burst at a reconciler whose provider takes 20 ms a call: how many
/// applies it takes, and how many events were not recorded (must be 0).
fn storm(rt: &tokio::runtime::Runtime) -> (u64, usize) {
    rt.block_on(async {
        let provider = TestProvider::new("bench").with_latency(Duration::from_millis(20));
        let stack = flat_stack(provider.clone());
        let store = Arc::new(MemoryStore::new());
        let mut session = stack.lock(store.clone(), "bench").await.expect("the lock");
        assert!(session.up(&Flat { n: 100, bump: 0 }).await.expect("the first up").succeeded());
        let (reconciler, events) = Reconciler::new(session, ReconcilerOptions::default()).expect("a reconciler");
        let metrics = reconciler.metrics();
        let task = tokio::spawn(reconciler.run(std::future::pending()));
        let t = Instant::now();
        let mut receipts = Vec::with_capacity(10_000);
        for i in 0..10_000i64 {
            receipts.push(events.submit(Event::new("bump", serde_json::json!({ "to": i }))).await.expect("queued"));
        }
        let mut recorded = 0;
        for r in receipts {
            if r.recorded().await.is_ok() {
                recorded += 1;
            }
        }
        drop(events);
        let session = task.await.expect("the reconciler task").expect("the reconciler");
        eprintln!("  storm: 10,000 events recorded in {:.0} ms, peak RSS {:.0} MiB", ms(t.elapsed()), peak_rss_mb());
        let history = store.history("events").await.expect("the audit log");
        assert_eq!(history.iter().filter(|e| e["outcome"] == "accepted").count(), recorded);
        session.close().await.expect("unlock");
        (metrics.applies_of("succeeded") + metrics.applies_of("failed"), 10_000 - recorded)
    })
}

/// A leader that dies right after taking the stack (its lease fresh: the worst case),
/// and a standby waiting in [`Stack::lock_when_free`]: the time from the death to the
/// standby holding the stack, on the file store with 2 s leases. Median of 3.
fn failover(rt: &tokio::runtime::Runtime) -> f64 {
    const LEASE: Duration = Duration::from_secs(2);
    let dir = scratch_dir("failover");
    let runs = (0..3)
        .map(|_| {
            rt.block_on(async {
                let store: Arc<dyn Store> = Arc::new(cairn_state::FileStore::new(&dir).with_lease(LEASE));
                let stack = flat_stack(TestProvider::new("bench"));
                let leader = stack.lock(store.clone(), "watch").await.expect("the lock");
                let (seen, mut waiting) = tokio::sync::watch::channel(false);
                let standby = {
                    let (stack, store) = (stack.clone(), store.clone());
                    tokio::spawn(async move {
                        let session = stack.lock_when_free(store, "watch", Duration::from_millis(500), || Duration::ZERO, |_| {
                            let _ = seen.send(true);
                        });
                        let session = session.await.expect("the standby's lock");
                        (Instant::now(), session)
                    })
                };
                let _ = waiting.wait_for(|w| *w).await;
                // Dies: no unlock, no more renewals.
                drop(leader);
                let died = Instant::now();
                let (took, session) = standby.await.expect("the standby");
                session.close().await.expect("unlock");
                ms(took - died)
            })
        })
        .collect();
    let _ = std::fs::remove_dir_all(&dir);
    median(runs)
}

/// 1,000 stacks of 10 resources each, watched in one process as `watch --stacks` does:
/// a lease (renewed in the background) and an idle reconciler task each, on the file
/// store. The growth of the process's RSS they cost, in MiB.
fn idle_stacks(rt: &tokio::runtime::Runtime) -> f64 {
    const STACKS: usize = 1000;
    let dir = scratch_dir("stacks");
    let store: Arc<dyn Store> = Arc::new(cairn_state::FileStore::new(&dir));
    let before = rss_mb();
    let t = Instant::now();
    let running = rt.block_on(async {
        let provider = TestProvider::new("bench");
        let mut running = Vec::with_capacity(STACKS);
        for i in 0..STACKS {
            let stack = Stack::<Flat>::new(format!("s{i:04}")).provider(provider.clone()).program(|cx, s: &Flat| {
                for j in 0..s.n {
                    cx.add(DynamicResource::new(&ROOT, format!("r{j}")).set("name", format!("r{j}")).set("size", j as i64));
                }
                Ok(())
            });
            let mut session = stack.lock(store.clone(), "watch").await.expect("the lock");
            assert!(session.up(&Flat { n: 10, bump: 0 }).await.expect("the first up").succeeded());
            let (reconciler, events) = Reconciler::new(session, ReconcilerOptions::default()).expect("a reconciler");
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let task = tokio::spawn(reconciler.run(async {
                let _ = stopped.await;
            }));
            running.push((events, stop, task));
        }
        // Idle for a few renewals.
        tokio::time::sleep(Duration::from_secs(1)).await;
        running
    });
    let grown = rss_mb() - before;
    eprintln!("  {STACKS} idle stacks: set up in {:.1} s; RSS {before:.0} -> {:.0} MiB", t.elapsed().as_secs_f64(), rss_mb());
    rt.block_on(async {
        for (events, stop, task) in running {
            drop(events);
            let _ = stop.send(());
            task.await.expect("the reconciler task").expect("the reconciler").close().await.expect("unlock");
        }
    });
    let _ = std::fs::remove_dir_all(&dir);
    grown
}

/// The parts a full run is made of, in order, each run in a process of its own.
const PARTS: [&str; 6] = ["plan", "state", "apply", "events", "failover", "stacks"];

fn main() {
    // `CAIRN_BENCH_ONLY=<part> cargo bench -p cairn-sdk --bench engine` runs one part.
    match std::env::var("CAIRN_BENCH_ONLY").ok().as_deref() {
        // Each part in a fresh process: what one part allocated and freed (the 100k
        // plan leaves a heap of small free blocks behind) must not slow the next, and
        // the peak RSS and RSS growth figures must be their part's own.
        None => {
            let exe = std::env::current_exe().expect("the benchmark's own path");
            for part in PARTS {
                let status = std::process::Command::new(&exe).env("CAIRN_BENCH_ONLY", part).status().expect("the benchmark runs");
                assert!(status.success(), "the {part} part of the benchmark failed: {status}");
            }
        }
        Some("plan") => {
            // The 100k plan first, before anything else is allocated, so its peak RSS
            // is its own.
            let nochange_100k = plan_100k();
            let nochange_10k = plan_10k(&runtime());
            // Ten times the resources: 10x would be linear.
            bench("plan_growth_10k_to_100k", nochange_100k / nochange_10k, "x");
        }
        // The big plan alone, for profiling: `CAIRN_BENCH_ONLY=plan_100k perf record ...`.
        Some("plan_100k") => {
            plan_100k();
        }
        Some("plan_10k") => {
            plan_10k(&runtime());
        }
        Some("state") => bench("state_bytes_ratio_10k", state_bytes_ratio(&runtime()), "x"),
        Some("apply") => apply_benches(&runtime()),
        // The apply's own time per step, many times over, for profiling.
        Some("apply_steps") => eprintln!("apply with no latency: {:.1} us a step (median of 300)", apply_step_us(&runtime(), 300)),
        Some("events") => event_benches(&runtime()),
        // One render and diff of the 1,000-resource stack, the bulk of an event's
        // latency, many times over, for profiling.
        Some("preview") => preview_1k(),
        Some("failover") => bench("failover_ms", failover(&runtime()), "ms"),
        // RSS growth needs a process that has not yet allocated (and kept) much.
        Some("stacks") => bench("stacks_per_process_1k_rss_mb", idle_stacks(&runtime()), "MiB"),
        Some(other) => panic!(
            "CAIRN_BENCH_ONLY={other} is no part of this benchmark: use one of {}, or plan_100k, plan_10k, apply_steps, preview",
            PARTS.join(", ")
        ),
    }
}

/// 3,000 previews of the 1,000-resource event stack: their p50, p90, p99 and maximum.
fn preview_1k() {
    runtime().block_on(async {
        let provider = TestProvider::new("bench");
        let stack = flat_stack(provider.clone());
        let store = Arc::new(MemoryStore::new());
        let mut session = stack.lock(store, "bench").await.expect("the lock");
        assert!(session.up(&Flat { n: 1000, bump: 0 }).await.expect("the first up").succeeded());
        let mut xs = Vec::new();
        for i in 0..3000 {
            let t = Instant::now();
            let plan = session.preview(&Flat { n: 1000, bump: i }).expect("the preview succeeds");
            std::hint::black_box(plan);
            xs.push(t.elapsed().as_secs_f64() * 1e6);
        }
        xs.sort_by(f64::total_cmp);
        eprintln!("preview: p50 {:.0} p90 {:.0} p99 {:.0} max {:.0} us", xs[1500], xs[2700], xs[2970], xs[2999]);
    });
}

/// The apply's critical path and its throughput at a parallelism limit.
fn apply_benches(rt: &tokio::runtime::Runtime) {
    describe(BenchState::Layered { levels: LEVELS, width: WIDTH });
    let floor = provider_floor(rt);
    let critical_path = LATENCY * LEVELS as u32;
    eprintln!(
        "  provider floor: {LEVELS} calls of {LATENCY:?} in a row take {:.1} ms, ratio {:.3}",
        ms(floor),
        floor.as_secs_f64() / critical_path.as_secs_f64()
    );
    eprintln!("  apply with no latency: {:.1} us a step (median of 5)", apply_step_us(rt, 5));
    let unlimited = time_apply(rt, usize::MAX);
    bench("apply_critical_path_ratio", unlimited.as_secs_f64() / critical_path.as_secs_f64(), "x");

    const PARALLELISM: usize = 16;
    let bound = critical_path.max(LATENCY * (LEVELS * WIDTH) as u32 / PARALLELISM as u32);
    let p16 = time_apply(rt, PARALLELISM);
    bench("apply_p16_ratio", p16.as_secs_f64() / bound.as_secs_f64(), "x");
}

fn event_benches(rt: &tokio::runtime::Runtime) {
    let before = CpuTicks::now();
    let (p50, p99, cpu) = event_to_first_call(rt, Arc::new(MemoryStore::new()), 1000);
    eprintln!("  event to first provider call: p50 {p50:.0} us, p99 {p99:.0} us; CPU time per event in all {cpu:.0} us");
    if let Some(steal) = before.steal_percent() {
        // A virtual machine's CPUs can be taken by its host for milliseconds at a time;
        // a sample that spans such a pause is slow for reasons the engine does not have.
        eprintln!("  meanwhile the host took {steal:.1}% of this machine's CPU time (steal, /proc/stat)");
    }
    bench("event_to_first_call_memory_p99_us", p99, "us");
    // The same on the default store, whose records are durable on disk before the
    // reconciler acknowledges an event and before the apply's first call: the figure
    // users get.
    let dir = scratch_dir("events");
    const ON_FILES: i64 = 1000;
    let (p50, p99, _) = event_to_first_call(rt, Arc::new(cairn_state::FileStore::new(&dir)), ON_FILES);
    eprintln!("  the same on the file store (each journal record written and fsynced): p50 {p50:.0} us, p99 {p99:.0} us over {ON_FILES} events");
    bench("event_to_first_call_p99_us", p99, "us");
    let _ = std::fs::remove_dir_all(&dir);
    let (applies, lost) = storm(rt);
    bench("storm_10k_applies", applies as f64, "applies");
    bench("storm_10k_lost", lost as f64, "events");
}
