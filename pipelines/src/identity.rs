//! `identity`: incremental connected components over identifier nodes (spec §3).
//!
//! Nodes are `user:<id>`, `device:<id>` and `phone:<keyed hash>` ([`IdNode`]: kind and
//! text, compared without the prefix); edges come from `link`
//! events (a star over the link's identifiers), clicks with a `user_id` (device–user) and
//! orders with a phone (user–phone). Every order's user is a node even without edges. A
//! person is a connected component; its label is the smallest user id in it (string order).
//!
//! Labels propagate by iterated min over neighbours (`iterate` + `reduce`), so a link that
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
use differential_dataflow::operators::Iterate;

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
                out.into_iter()
                    .filter(|(a, b)| a != b)
                    .flat_map(|(a, b)| [(a.clone(), b.clone()), (b, a)])
            })
            .distinct();
        let order_users = cx.by_type.orders.clone().flat_map(|e| match e.body {
            Body::Order { user_id, .. } => IdNode::user(&user_id),
            _ => None,
        });
        let nodes = edges.clone().map(|(a, _)| a).concat(order_users).distinct();
        let initial = nodes.map(|n| {
            let l = initial_label(&n);
            (n, l)
        });
        let labels = initial.clone().iterate(|scope, inner| {
            let edges = edges.enter(scope);
            let initial = initial.enter(scope);
            inner
                .join_map(edges, |_node, label, neighbour| {
                    (neighbour.clone(), label.clone())
                })
                .concat(initial)
                .reduce_named("IdentityMinLabel", |_node, labels, out| {
                    out.push((labels[0].0.clone(), 1))
                })
        });
        cx.shared.labels = Some(labels);
        Ok(())
    }
}
