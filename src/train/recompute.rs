//! Gradient checkpointing per decoder layer (`--gradient-checkpointing`), as transformers'
//! `gradient_checkpointing_enable()`: a forward pass without a graph keeps only each layer's input
//! `[b, seq, hidden]`; the backward pass then runs the head and loss with autodiff from the last
//! layer's output, and each layer again, last to first, with autodiff from its kept input,
//! feeding it the gradient of its output. Peak memory holds the layer inputs plus one layer's
//! activations instead of every layer's; each layer's forward runs twice.
//!
//! LoRA dropout draws its masks from the device's generator seeded per layer, so both runs of a
//! layer see the same masks.

use burn::tensor::{Gradients, Tensor};

use super::score::{TokenizedPair, head_token_logprobs, model_input, seed_layer};
use crate::error::{Error, Result};
use crate::model::Transformer;
use crate::model::named::{ParamRef, trainable_mut};

/// Adds the gradients `grads` holds for `params` into `acc` (aligned with `params`; `[rows,
/// cols]` as [`ParamRef::grad`] gives them, strided views summed as the values they hold).
fn accumulate(params: &[(String, ParamRef)], grads: &Gradients, acc: &mut [Option<Tensor<2>>]) {
    for ((_, p), slot) in params.iter().zip(acc.iter_mut()) {
        if let Some(g) = p.grad(grads) {
            *slot = Some(match slot.take() {
                Some(a) => a + g,
                None => g,
            });
        }
    }
}

/// Gradients of `loss_of(token log-probs of pairs)` for `model`'s trainable parameters, aligned
/// with [`trainable_mut`], recomputing each layer in the backward pass; with the second value
/// `loss_of` returns (what the caller reads back). `dropout_seed` seeds LoRA dropout per layer
/// (`None`: no dropout to draw).
pub fn gradients(
    model: &Transformer,
    pairs: &[TokenizedPair],
    pad_id: u32,
    max_logits: usize,
    dropout_seed: Option<u64>,
    loss_of: impl FnOnce(Tensor<1>) -> (Tensor<1>, Tensor<1>),
) -> Result<(Vec<Tensor<2>>, Tensor<1>)> {
    let input = model_input(model, pairs, pad_id);
    let ctx = model.pass_context(&input);
    let mut listed = model.clone();
    let params = trainable_mut(&mut listed);
    let mut acc: Vec<Option<Tensor<2>>> = vec![None; params.len()];

    // Forward without a graph: the parameters' plain values on an autodiff input that needs no
    // gradient (so LoRA dropout still applies), keeping each layer's input.
    let frozen = burn::module::Module::valid(model);
    let embedded = model.embed_tokens(&input); // [b, s, hidden]
    let mut inputs: Vec<Tensor<3>> = vec![embedded.clone().inner()];
    for (l, layer) in frozen.layers.iter().enumerate() {
        seed_layer(model, dropout_seed, l);
        let x = inputs[l].clone().autodiff();
        inputs.push(layer.forward(x, &ctx.step(layer.kind), None).inner());
    }

    // The head and the loss, from the last layer's output.
    let last = inputs.pop().unwrap_or_else(|| embedded.clone().inner());
    let h = last.autodiff().require_grad();
    let lp = head_token_logprobs(model, model.norm.forward(h.clone()), pairs, max_logits);
    let (loss, measured) = loss_of(lp);
    let grads = loss.backward();
    accumulate(&params, &grads, &mut acc);
    let mut upstream = h.grad(&grads).ok_or_else(no_grad)?;
    drop(grads);

    // Each layer again, last to first, fed the gradient of its output.
    for (l, layer) in model.layers.iter().enumerate().rev() {
        seed_layer(model, dropout_seed, l);
        let x = inputs.pop().ok_or_else(no_grad)?.autodiff().require_grad();
        let out = layer.forward(x.clone(), &ctx.step(layer.kind), None);
        let grads = (out * upstream).sum().backward();
        accumulate(&params, &grads, &mut acc);
        upstream = x.grad(&grads).ok_or_else(no_grad)?;
    }

    // The embedding lookup, when the embeddings are trained.
    if embedded.is_tracked() {
        let grads = (embedded * upstream).sum().backward();
        accumulate(&params, &grads, &mut acc);
    }
    let grads = params
        .into_iter()
        .zip(acc)
        .map(|((name, _), g)| {
            g.ok_or_else(|| {
                Error::Device(format!(
                    "no gradient reached {name}; the model is not on an autodiff device"
                ))
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((grads, measured))
}

fn no_grad() -> Error {
    Error::Device("a recomputed layer's input got no gradient".into())
}
