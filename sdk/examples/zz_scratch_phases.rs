// TEMPORARY scratch (to be deleted): phase timing of the flat 1000 preview.
use std::time::Instant;
use cairn_sdk::schema::{Property, ResourceType};
use cairn_sdk::testing::TestProvider;
use cairn_sdk::{Cx, DynamicResource, Stack};
use serde::{Deserialize, Serialize};

static ROOT: ResourceType = ResourceType::new(
    "bench:index:Root",
    &[Property::input("name").required().forces_replacement(), Property::input("size"), Property::input("tags"), Property::output("id")],
);
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
struct Flat { n: usize, bump: i64 }
fn prog(cx: &mut Cx, s: &Flat) -> cairn_sdk::ProgramResult {
    for i in 0..s.n {
        let size = if i == 0 { s.bump } else { i as i64 };
        cx.add(DynamicResource::new(&ROOT, format!("r{i:06}")).set("name", format!("flat-{i}")).set("size", size));
    }
    Ok(())
}
fn micro2() {
    let mut t = [Vec::new(), Vec::new(), Vec::new(), Vec::new()];
    for _ in 0..2000 {
        let mut names: Vec<String> = (0..1000).map(|i| format!("r{i:06}")).collect();
        let mut flats: Vec<String> = (0..1000).map(|i| format!("flat-{i}")).collect();
        let a = Instant::now();
        let mut rs = Vec::with_capacity(1000);
        for i in 0..1000usize {
            rs.push(DynamicResource::new(&ROOT, std::mem::take(&mut names[i])));
        }
        let b = Instant::now();
        let rs: Vec<DynamicResource> = rs.into_iter().enumerate().map(|(i, r)| r.set("name", std::mem::take(&mut flats[i]))).collect();
        let c = Instant::now();
        let rs: Vec<DynamicResource> = rs.into_iter().enumerate().map(|(i, r)| r.set("size", i as i64)).collect();
        let d = Instant::now();
        let mut urns = Vec::with_capacity(1000);
        for _r in &rs { urns.push(std::sync::Arc::<str>::from("urn:cairn:events::bench:index:Root::r000001")); }
        let e = Instant::now();
        drop(urns);
        drop(rs);
        for (j, (x, y)) in [(a, b), (b, c), (c, d), (d, e)].into_iter().enumerate() {
            t[j].push((y - x).as_secs_f64() * 1e6);
        }
    }
    for (n, mut v) in ["new", "set name", "set size", "urns"].into_iter().zip(t) {
        v.sort_by(f64::total_cmp);
        eprint!("{n} {:.0}  ", v[v.len() / 2]);
    }
    eprintln!();
}

fn micro() {
    let mut t = [Vec::new(), Vec::new(), Vec::new(), Vec::new()];
    for _ in 0..2000 {
        let a = Instant::now();
        let mut keep = Vec::with_capacity(2000);
        for i in 0..1000usize { keep.push(format!("r{i:06}")); keep.push(format!("flat-{i}")); }
        let b = Instant::now();
        drop(keep);
        let mut keep = Vec::with_capacity(1000);
        let c = Instant::now();
        for i in 0..1000usize { keep.push(DynamicResource::new(&ROOT, format!("r{i:06}")).set("name", format!("flat-{i}")).set("size", i as i64)); }
        let d = Instant::now();
        drop(keep);
        let e = Instant::now();
        let mut cx = Cx::new("events");
        for i in 0..1000usize { cx.add(DynamicResource::new(&ROOT, format!("r{i:06}")).set("name", format!("flat-{i}")).set("size", i as i64)); }
        let f = Instant::now();
        drop(cx);
        for (j, (x, y)) in [(a, b), (c, d), (d, e), (e, f)].into_iter().enumerate() {
            t[j].push((y - x).as_secs_f64() * 1e6);
        }
    }
    for (n, mut v) in ["formats", "builders", "drop builders", "cx"].into_iter().zip(t) {
        v.sort_by(f64::total_cmp);
        eprint!("{n} {:.0}  ", v[v.len() / 2]);
    }
    eprintln!();
}

struct Counting;
static ALLOCS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
unsafe impl std::alloc::GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: std::alloc::Layout) -> *mut u8 { ALLOCS.fetch_add(1, std::sync::atomic::Ordering::Relaxed); unsafe { std::alloc::System.alloc(l) } }
    unsafe fn dealloc(&self, p: *mut u8, l: std::alloc::Layout) { unsafe { std::alloc::System.dealloc(p, l) } }
    unsafe fn realloc(&self, p: *mut u8, l: std::alloc::Layout, n: usize) -> *mut u8 { ALLOCS.fetch_add(1, std::sync::atomic::Ordering::Relaxed); unsafe { std::alloc::System.realloc(p, l, n) } }
}

#[global_allocator]
static A: Counting = Counting;
fn count(stack: &Stack<Flat>, state: &cairn_sdk::StackState) {
    let s = Flat { n: 1000, bump: 7 };
    let a = ALLOCS.load(std::sync::atomic::Ordering::Relaxed);
    let mut cx = Cx::new("events");
    prog(&mut cx, &s).unwrap();
    let b = ALLOCS.load(std::sync::atomic::Ordering::Relaxed);
    drop(cx);
    let g = stack.render(&s).unwrap();
    let c = ALLOCS.load(std::sync::atomic::Ordering::Relaxed);
    let p = cairn_sdk::plan::plan(&g, state, stack.providers(), serde_json::to_value(s).unwrap()).unwrap();
    let d = ALLOCS.load(std::sync::atomic::Ordering::Relaxed);
    drop((g, p));
    eprintln!("allocs: program {} render {} plan {}", b - a, c - b, d - c);
}

fn main() {
    sizes();
    micro2();
    micro();
    let stack = Stack::<Flat>::new("events").provider(TestProvider::new("bench")).program(prog);
    let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
    let state = rt.block_on(stack.up(&Flat { n: 1000, bump: 0 }, &stack.new_state())).unwrap().state;
    count(&stack, &state);
    let mut t = [Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new()];
    for i in 0..3000 {
        let s = Flat { n: 1000, bump: i };
        let a = Instant::now();
        let mut cx = Cx::new("events");
        prog(&mut cx, &s).unwrap();
        let b = Instant::now();
        drop(cx);
        let c = Instant::now();
        let g = stack.render(&s).unwrap();
        let d = Instant::now();
        let p = cairn_sdk::plan::plan(&g, &state, stack.providers(), serde_json::to_value(s).unwrap()).unwrap();
        let e = Instant::now();
        drop(g);
        let f = Instant::now();
        drop(p);
        let h = Instant::now();
        let p = stack.preview(&s, &state).unwrap();
        drop(p);
        let k = Instant::now();
        for (j, (x, y)) in [(a, b), (b, c), (c, d), (d, e), (e, f), (f, h), (h, k)].into_iter().enumerate() {
            t[j].push((y - x).as_secs_f64() * 1e6);
        }
    }
    let names = ["program", "drop cx", "render", "plan", "drop graph", "drop plan", "preview"];
    for (n, mut v) in names.into_iter().zip(t) {
        v.sort_by(f64::total_cmp);
        eprint!("{n} {:.0}  ", v[v.len() / 2]);
    }
    eprintln!();
}
#[allow(dead_code)]
fn sizes() {
    eprintln!("Prop {} pair {} Decl {} Change {} Value {} ResState {}", std::mem::size_of::<cairn_sdk::input::Prop>(), std::mem::size_of::<(std::borrow::Cow<'static, str>, cairn_sdk::input::Prop)>(), std::mem::size_of::<cairn_sdk::Decl>(), std::mem::size_of::<cairn_sdk::plan::Change>(), std::mem::size_of::<serde_json::Value>(), std::mem::size_of::<cairn_sdk::ResourceState>());
}
