//! The seed talk's three examples on an embedded local cluster:
//! a task graph built at run time, a stateful actor, and many small tasks.
//!
//! Run with `make run` (or `cargo run --release --example quickstart`).

use std::time::Instant;

/// "Reads" an array: here, makes one from a seed.
#[rustray::remote]
fn read_array(seed: u64) -> Vec<f64> {
    (0..1_000).map(|i| (seed * 1_000 + i) as f64).collect()
}

/// Adds two arrays element-wise.
#[rustray::remote]
fn add(a: Vec<f64>, b: Vec<f64>) -> Vec<f64> {
    a.iter().zip(&b).map(|(x, y)| x + y).collect()
}

#[rustray::remote]
fn double(x: u64) -> u64 {
    x * 2
}

/// A counter whose state lives in its own worker process.
pub struct Counter {
    n: u64,
}

#[rustray::actor]
impl Counter {
    pub fn new() -> Self {
        Counter { n: 0 }
    }

    pub fn increment(&mut self) -> u64 {
        self.n += 1;
        self.n
    }
}

fn main() -> rustray::Result<()> {
    let t0 = Instant::now();
    rustray::init()?;
    println!(
        "cluster started in {:.1} ms",
        t0.elapsed().as_secs_f64() * 1e3
    );

    // 1. A task graph: id1 = read_array.remote(f1); id2 = read_array.remote(f2);
    //    id = add.remote(id1, id2); sum = ray.get(id)
    let t = Instant::now();
    let id1 = read_array::remote(1u64)?;
    let id2 = read_array::remote(2u64)?;
    let id = add::remote(id1, id2)?;
    let sum = rustray::get(&id)?;
    println!(
        "add(read_array(1), read_array(2)): first {} last {} ({} elements) in {:.2} ms",
        sum[0],
        sum[sum.len() - 1],
        sum.len(),
        t.elapsed().as_secs_f64() * 1e3
    );

    // 2. An actor: state persists between calls, calls run in order.
    let t = Instant::now();
    let counter = Counter::remote()?;
    counter.increment();
    let second = rustray::get(&counter.increment())?;
    println!(
        "Counter incremented twice: {second} in {:.2} ms (including actor creation)",
        t.elapsed().as_secs_f64() * 1e3
    );

    // 3. Many small tasks: submit 10,000, then fetch every result.
    let t = Instant::now();
    let refs = (0..10_000u64)
        .map(double::remote)
        .collect::<rustray::Result<Vec<_>>>()?;
    let results = rustray::get_all(&refs)?;
    let secs = t.elapsed().as_secs_f64();
    assert!(results.iter().enumerate().all(|(i, r)| *r == 2 * i as u64));
    println!(
        "double x 10,000: {:.1} ms, {:.0} tasks/s",
        secs * 1e3,
        10_000.0 / secs
    );

    rustray::shutdown();
    Ok(())
}
