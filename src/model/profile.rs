//! Where inference time goes, per operator of the optimised plan.
//!
//! The performance work follows this table (`onnx-lambda profile`): it runs
//! the compiled plan node by node with a timer around each node, so it
//! profiles exactly what the services run, our own operators included, with
//! no separate tool to keep in step.

use std::collections::BTreeMap;
use std::time::Instant;

use serde::Serialize;
use tract_onnx::prelude::*;
use tract_onnx::tract_core;

use super::Model;
use crate::error::ModelError;
use crate::ops::OperatorPool;

/// Time and arithmetic of all the nodes of one operator kind.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct OpProfile {
    /// The operator's name in the plan (`OptMatMul`, ...), and the node's
    /// name when profiled node by node.
    pub op: String,
    /// How many nodes of this kind the plan has.
    pub nodes: usize,
    /// Mean time per run, in milliseconds (all nodes of this kind).
    pub ms: f64,
    /// Multiply-adds per run, from the operators' own cost models.
    pub macs: u64,
}

impl OpProfile {
    /// Achieved multiply-adds per second, in billions (0 when none).
    pub fn gmacs_per_second(&self) -> f64 {
        if self.ms > 0.0 {
            self.macs as f64 / self.ms / 1e6
        } else {
            0.0
        }
    }
}

impl Model {
    /// Runs `input` through the plan `rounds` times (after one unmeasured
    /// run) timing every node, and returns one row per operator kind (or
    /// per node), slowest first. With `pool`, the operators split over its
    /// threads as they do for a single request.
    pub fn profile(
        &self,
        input: Tensor,
        rounds: usize,
        by_node: bool,
        pool: Option<&OperatorPool>,
    ) -> Result<Vec<OpProfile>, ModelError> {
        let fail = |e: anyhow::Error| ModelError::Inference(format!("{e:#}"));
        let model = self.plan.model();
        let mut state = self.plan.spawn().map_err(fail)?;
        let mut nanos = vec![0u128; model.nodes.len()];
        let input: TValue = input.into();
        let mut timed = || -> TractResult<()> {
            state.run(tvec!(input.clone()))?;
            for _ in 0..rounds.max(1) {
                state.run_plan_with_eval(tvec!(input.clone()), |ctx, op_state, node, inputs| {
                    let started = Instant::now();
                    let out = tract_core::plan::eval(ctx, op_state, node, inputs);
                    nanos[node.id] += started.elapsed().as_nanos();
                    out
                })?;
            }
            Ok(())
        };
        match pool {
            Some(pool) => pool.run(timed),
            None => timed(),
        }
        .map_err(fail)?;
        let mut kinds: BTreeMap<String, OpProfile> = BTreeMap::new();
        for node in &model.nodes {
            if node.op_is::<tract_core::ops::konst::Const>() || node.inputs.is_empty() {
                continue;
            }
            let op = if by_node {
                format!(
                    "{} {} {}",
                    node.op.name(),
                    node.name,
                    model
                        .outlet_fact(node.inputs[0])
                        .map(|f| format!("{:?}", f.shape))
                        .unwrap_or_default()
                )
            } else {
                node.op.name().to_string()
            };
            let row = kinds.entry(op.clone()).or_insert(OpProfile {
                op,
                nodes: 0,
                ms: 0.0,
                macs: 0,
            });
            row.nodes += 1;
            row.ms += nanos[node.id] as f64 / 1e6 / rounds.max(1) as f64;
            row.macs += node_macs(model, node);
        }
        let mut rows: Vec<OpProfile> = kinds.into_values().collect();
        rows.sort_by(|a, b| b.ms.total_cmp(&a.ms));
        Ok(rows)
    }
}

/// The node's multiply-adds, per its operator's cost model (0 if unknown).
fn node_macs(model: &TypedModel, node: &TypedNode) -> u64 {
    let Ok(facts) = model.node_input_facts(node.id) else {
        return 0;
    };
    let Ok(costs) = node.op.cost(&facts) else {
        return 0;
    };
    costs
        .iter()
        .filter(|(c, _)| matches!(c, tract_core::ops::Cost::FMA(_)))
        .filter_map(|(_, n)| n.to_i64().ok())
        .map(|n| n.max(0) as u64)
        .sum()
}
