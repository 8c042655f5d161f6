//! Coverage of the op tables of tests/gradcheck.rs, tests/forward.rs and
//! tests/conv_forward.rs: every name of `Op::names()` has a row (an op and the test that
//! checks it) or a documented exclusion, so that an op added without a row fails a test.
//!
//! A row is checked, not trusted: each file's check helpers `record` the ops their check
//! covers, and a coverage test runs every row's test with recording on (`ops_recorded_by`)
//! and requires its op among them. Recording is per thread and off everywhere but on the
//! coverage test's own thread, so the other tests run as before; while it is on, the
//! helpers may skip their slow part (`recording()`: gradcheck skips its finite differences).
//!
//! Ops are recorded in one of two roles: `Checked` (the op's own values or gradient rule
//! are what the check compares) and `InGradient` (the op is part of an analytic gradient
//! that the check compares: how gradient-only ops such as `gelu_grad` are checked).
#![allow(dead_code)] // each test binary uses part of it

use std::cell::RefCell;
use std::collections::BTreeSet;

use kiln_core::{Graph, Op, Plan, Tensor};

/// The ops whose hand-computed forward values are in conv_forward.rs rather than in
/// forward.rs: forward.rs excludes them and conv_forward.rs requires a row for each.
pub const IN_CONV_FORWARD: [&str; 7] = [
    "conv2d",
    "conv2d_backward_input",
    "conv2d_backward_weight",
    "max_pool2d",
    "max_pool2d_backward",
    "avg_pool2d",
    "avg_pool2d_backward",
];

/// The int8 ops, whose exact integer values are in int8.rs: forward.rs excludes them and
/// int8.rs requires a row for each.
pub const IN_INT8: [&str; 2] = ["quantize_i8", "matmul_i8"];

/// A row of an op table: an op's name and a test function that checks that op.
pub type Row = (&'static str, fn());

/// An op left out of a table, with the reason (and where it is checked instead).
pub type Exclusion = (&'static str, &'static str);

/// How a check covers an op it records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// The check compares the op's values (forward tables) or differentiates through it
    /// (gradcheck: the op's gradient rule is checked).
    Checked,
    /// The op is in an analytic gradient the check compares with finite differences.
    InGradient,
}

/// What the running test's checks recorded: (role, op name).
type Recorded = BTreeSet<(Role, &'static str)>;

thread_local! {
    static RECORDED: RefCell<Option<Recorded>> = const { RefCell::new(None) };
}

/// Whether this thread runs a row for a coverage test (checks may skip their slow part).
pub fn recording() -> bool {
    RECORDED.with(|r| r.borrow().is_some())
}

/// Note that the running check covers `ops` in `role` (nothing happens unless `recording()`).
pub fn record(role: Role, ops: impl IntoIterator<Item = &'static str>) {
    RECORDED.with(|r| {
        if let Some(set) = r.borrow_mut().as_mut() {
            set.extend(ops.into_iter().map(|op| (role, op)));
        }
    });
}

/// The ops of the nodes on a path from one of `from` to one of `to`, both ends included:
/// the ops whose gradient rules a gradient of `to` with respect to `from` goes through.
pub fn ops_between(g: &Graph, from: &[Tensor], to: &[Tensor]) -> BTreeSet<&'static str> {
    let nodes = g.nodes();
    // Node ids are topological: inputs come before the nodes that read them.
    let mut reached = vec![false; nodes.len()];
    for t in from {
        reached[t.id()] = true;
    }
    for (id, node) in nodes.iter().enumerate() {
        reached[id] |= node.inputs.iter().any(|i| reached[i.id()]);
    }
    let needed = ancestors(g, to);
    (0..nodes.len()).filter(|&id| reached[id] && needed[id]).map(|id| nodes[id].op.name()).collect()
}

/// The ops whose values a run of `plan` computes: those of every graph node the plan's
/// outputs and steps depend on (aliases, inputs and states included), and the ops of its
/// steps (`fused` and `fused_reduce`, which only plans have).
pub fn ops_of_plan(g: &Graph, plan: &Plan) -> BTreeSet<&'static str> {
    let mut roots: Vec<Tensor> = plan.outputs.iter().map(|o| o.tensor).collect();
    roots.extend(plan.steps.iter().map(|s| s.node));
    let needed = ancestors(g, &roots);
    let mut ops: BTreeSet<&'static str> =
        g.nodes().iter().enumerate().filter(|(id, _)| needed[*id]).map(|(_, node)| node.op.name()).collect();
    ops.extend(plan.steps.iter().map(|s| s.op.name()));
    ops
}

/// The ops of the nodes numbered `first` or later that `to` depends on: with `first` the
/// graph's length before `Graph::grad`, the ops of the gradients `to` it returned.
pub fn ops_added_since(g: &Graph, first: usize, to: &[Tensor]) -> BTreeSet<&'static str> {
    let needed = ancestors(g, to);
    (first..g.len()).filter(|&id| needed[id]).map(|id| g.nodes()[id].op.name()).collect()
}

/// Which nodes `to` depends on (itself included), by node id.
fn ancestors(g: &Graph, to: &[Tensor]) -> Vec<bool> {
    let nodes = g.nodes();
    let mut needed = vec![false; nodes.len()];
    for t in to {
        needed[t.id()] = true;
    }
    for id in (0..nodes.len()).rev() {
        if needed[id] {
            for i in &nodes[id].inputs {
                needed[i.id()] = true;
            }
        }
    }
    needed
}

/// Run `test` on this thread with recording on; what its checks recorded.
pub fn ops_recorded_by(test: fn()) -> Recorded {
    struct Off;
    impl Drop for Off {
        fn drop(&mut self) {
            RECORDED.with(|r| *r.borrow_mut() = None);
        }
    }
    RECORDED.with(|r| *r.borrow_mut() = Some(BTreeSet::new()));
    let _off = Off;
    test();
    RECORDED.with(|r| r.borrow_mut().take().unwrap_or_default())
}

/// The check of a table (`table` names it in messages): every name of `Op::names()` is
/// the op of a row (of `rows`, whose tests must record it as `Checked`, or of
/// `gradient_rows`, whose tests must record it `InGradient`) or of an exclusion; every row
/// and exclusion names a real op, and no op is both a row and excluded. Every row's test
/// runs, with recording on. Reports every problem at once.
pub fn assert_rows_cover_every_op(table: &str, rows: &[Row], gradient_rows: &[Row], excluded: &[Exclusion]) {
    let names = Op::names();
    let all_rows = || rows.iter().map(|r| (Role::Checked, r)).chain(gradient_rows.iter().map(|r| (Role::InGradient, r)));
    let has_row = |name: &str| all_rows().any(|(_, (op, _))| *op == name);
    let mut problems = Vec::new();
    for (name, why) in excluded {
        if !names.contains(name) {
            problems.push(format!("exclusion '{name}' ({why}) is not a name of Op::names()"));
        }
        if has_row(name) {
            problems.push(format!("'{name}' is both excluded ({why}) and a row"));
        }
    }
    for (role, (op, test)) in all_rows() {
        if !names.contains(op) {
            problems.push(format!("row '{op}' is not a name of Op::names()"));
            continue;
        }
        let recorded = ops_recorded_by(*test);
        if !recorded.contains(&(role, *op)) {
            problems.push(format!("row '{op}': its test does not record {op} as {role:?} (it records {recorded:?})"));
        }
    }
    for name in &names {
        if !has_row(name) && !excluded.iter().any(|(op, _)| op == name) {
            problems.push(format!("'{name}' has no row: add a test and a row for it (or a documented exclusion)"));
        }
    }
    assert!(problems.is_empty(), "{table} does not cover every op of Op::names():\n  {}", problems.join("\n  "));
}
