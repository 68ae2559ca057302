//! `identity`: incremental connected components over identifier nodes (spec §3).
//!
//! Nodes are `user:<id>`, `device:<id>` and `phone:<keyed hash>` ([`IdNode`]: kind and
//! text), keyed in every arrangement by their [`adflow_model::event::NodeId`] (a 128-bit hash:
//! integer comparisons, no text to fetch); edges come from `link`
//! events (a star over the link's identifiers), clicks with a `user_id` (device–user) and
//! orders with a phone (user–phone). Every order's user is a node even without edges. A
//! person is a connected component; its label is the smallest user id in it (string order).
//!
//! Labels propagate by iterated min over neighbours (differential's `propagate_core`: a loop
//! of `reduce` (min) and a join with the edges, arranged once outside the loop), so a link that
//! arrives late merges components and every label downstream is corrected: the attribution
//! and order rows that depended on the old labels are retracted and re-emitted.
//!
//! Identity edges never expire: the graph's size is the number of distinct identifiers and
//! links (the population), not the stream's length.
//!
//! Provides [`crate::SharedName::Labels`].

use crate::types::Label;
use crate::{Context, Pipeline, SharedName};
use adflow_model::event::{Body, IdNode};
use adflow_model::{Sym, Table};
use differential_dataflow::algorithms::graphs::propagate::propagate_core;

pub struct Identity;

/// The label a node starts with: itself (the smallest node of a component is its label).
pub fn initial_label(node: &IdNode) -> Label {
    node.clone()
}

impl Pipeline for Identity {
    fn name(&self) -> &'static str {
        "identity"
    }
    fn uses(&self) -> &'static [SharedName] {
        &[]
    }
    fn provides(&self) -> &'static [SharedName] {
        &[SharedName::Labels]
    }
    fn emits(&self) -> &'static [Table] {
        &[]
    }

    fn build(&self, cx: &mut Context<'_>) -> Result<(), String> {
        // Every edge in both directions, keyed by the endpoints' ids (the nodes ride along
        // once, for the labels).
        let edges = cx
            .by_type
            .links
            .clone()
            .concat(cx.by_type.clicks.clone())
            .concat(cx.by_type.orders.clone())
            .flat_map(|e| {
                let mut out: Vec<(IdNode, IdNode)> = Vec::new();
                match e.body {
                    Body::Link { nodes } => {
                        if let Some((first, rest)) = nodes.split_first() {
                            for k in rest {
                                out.push((first.clone(), k.clone()));
                            }
                        }
                    }
                    Body::Click {
                        device_id,
                        user_id: Some(u),
                        ..
                    } => {
                        if let (Some(d), Some(u)) = (IdNode::device(&device_id), IdNode::user(&u)) {
                            out.push((d, u));
                        }
                    }
                    Body::Order {
                        user_id,
                        phone_hash: Some(p),
                        ..
                    } => {
                        if let Some(u) = IdNode::user(&user_id) {
                            out.push((u, IdNode::Phone(Sym::from(p))));
                        }
                    }
                    _ => {}
                }
                out.into_iter().filter(|(a, b)| a != b).flat_map(|(a, b)| {
                    let (ia, ib) = (a.id(), b.id());
                    [((ia, ib), a.clone()), ((ib, ia), b)]
                })
            })
            .distinct();
        let order_users = cx.by_type.orders.clone().flat_map(|e| match e.body {
            Body::Order { user_id, .. } => IdNode::user(&user_id).map(|n| (n.id(), n)),
            _ => None,
        });
        let nodes = edges
            .clone()
            .map(|((a, _), node)| (a, node))
            .concat(order_users)
            .distinct();
        let initial = nodes.map(|(id, n)| {
            let l = initial_label(&n);
            (id, l)
        });
        let edges = edges.map(|((a, b), _)| (a, b));
        // Differential's own label propagation: the edges are arranged once, outside the
        // loop, and the loop's min-reduce is the arrangement its join reads.
        let labels = propagate_core(edges.arrange_by_key_named("IdentityEdges"), initial, |_| 0);
        cx.shared.labels = Some(labels);
        Ok(())
    }
}
