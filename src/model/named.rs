//! The transformer's parameters by Hugging Face name: what the trainer updates and what a
//! checkpoint writes. Names come from [`crate::hf::names`]; this file only pairs them with fields,
//! in the order of [`crate::hf::names::expected_tensors`].

use burn::module::Param;
use burn::tensor::Gradients;
use burn::tensor::{DType, Device, Tensor, TensorData};

use super::Transformer;
use super::layers::Linear;
use super::targets::{has_adapters, targets_mut};
use crate::hf::names::{self as hf_names, LayerTensor};
use crate::kernels::like;

/// A mutable parameter of rank 1 (norms, biases) or 2 (matrices).
pub enum ParamRef<'a> {
    One(&'a mut Param<Tensor<1>>),
    Two(&'a mut Param<Tensor<2>>),
}

impl ParamRef<'_> {
    pub fn shape(&self) -> Vec<usize> {
        match self {
            ParamRef::One(p) => p.val().dims().to_vec(),
            ParamRef::Two(p) => p.val().dims().to_vec(),
        }
    }

    /// The parameter's id: a new one whenever its value is replaced ([`ParamRef::set_flat`]).
    pub fn id(&self) -> burn::module::ParamId {
        match self {
            ParamRef::One(p) => p.id,
            ParamRef::Two(p) => p.id,
        }
    }

    /// The value, flattened, without autodiff tracking `[numel]`.
    pub fn value_flat(&self) -> Tensor<1> {
        match self {
            ParamRef::One(p) => p.val().inner(),
            ParamRef::Two(p) => {
                let [a, b] = p.val().dims();
                p.val().inner().reshape([a * b])
            }
        }
    }

    /// The value read back to the host, flattened, as f32; `name` names it in the error.
    pub fn host_f32(&self, name: &str) -> crate::error::Result<Vec<f32>> {
        self.value_flat()
            .into_data()
            .try_into_vec_as::<f32>()
            .map_err(|e| crate::error::Error::Device(format!("reading {name} back failed: {e:?}")))
    }

    /// This parameter's gradient in `grads` as `[rows, cols]` (a vector's as `[1, n]`), as burn
    /// gives it: a weight's is a transposed view (the linear layer computes `x · wᵀ`), and
    /// flattening it here would copy it; the optimizer's packing reads it in place.
    pub fn grad(&self, grads: &Gradients) -> Option<Tensor<2>> {
        match self {
            ParamRef::One(p) => p.val().grad(grads).map(Tensor::unsqueeze),
            ParamRef::Two(p) => p.val().grad(grads),
        }
    }

    /// Replaces the value with `data` on `device`, taking its shape (the loader fills a skeleton
    /// whose placeholders have the right rank but not the right shape).
    pub fn set_data(&mut self, data: TensorData, device: &Device) {
        match self {
            ParamRef::One(p) => **p = Param::from_tensor(Tensor::from_data(data, device)),
            ParamRef::Two(p) => **p = Param::from_tensor(Tensor::from_data(data, device)),
        }
    }

    /// Stops gradients at this parameter (a frozen base weight under LoRA).
    pub fn freeze(&mut self) {
        match self {
            ParamRef::One(p) => **p = (**p).clone().set_require_grad(false),
            ParamRef::Two(p) => **p = (**p).clone().set_require_grad(false),
        }
    }

    /// Stores the value in `dtype` when the parameter is frozen (gets no gradient); a trained
    /// one keeps its f32 master value.
    pub fn store_frozen_as(&mut self, dtype: DType) {
        // Cast off the graph, then back onto it as a leaf with the old value's autodiff context.
        match self {
            ParamRef::One(p) if !p.val().is_require_grad() => {
                let t = leaf_like(like(p.val().inner(), dtype), &p.val());
                **p = Param::from_tensor(t).set_require_grad(false)
            }
            ParamRef::Two(p) if !p.val().is_require_grad() => {
                let t = leaf_like(like(p.val().inner(), dtype), &p.val());
                **p = Param::from_tensor(t).set_require_grad(false)
            }
            _ => {}
        }
    }

    /// Replaces the value with a placeholder of the same shape that holds no memory (one
    /// element, never written or read, broadcast: no fill launch), so that the buffer the value
    /// was a view of has no other owner and the optimizer's update writes it in place instead of
    /// beside it; [`ParamRef::set_flat`] follows.
    pub fn release(&mut self) {
        match self {
            ParamRef::One(p) => **p = Param::from_tensor(placeholder(&p.val())),
            ParamRef::Two(p) => **p = Param::from_tensor(placeholder(&p.val())),
        }
    }

    /// Replaces the value with `flat` (reshaped to this parameter's shape); under autodiff the
    /// new value is a fresh leaf that requires grad, with the old value's checkpointing strategy.
    pub fn set_flat(&mut self, flat: Tensor<1>) {
        match self {
            ParamRef::One(p) => **p = Param::from_tensor(leaf_like(flat, &p.val())),
            ParamRef::Two(p) => {
                let old = p.val();
                let [a, b] = old.dims();
                **p = Param::from_tensor(leaf_like(flat.reshape([a, b]), &old));
            }
        }
    }
}

/// [`ParamRef::release`]'s stand-in for `old`: one uninitialised element broadcast to its shape,
/// in its dtype, on its device, with its autodiff context.
fn placeholder<const D: usize>(old: &Tensor<D>) -> Tensor<D> {
    let inner = old.clone().inner();
    let one = Tensor::<D>::empty([1; D], (&inner.device(), inner.dtype()));
    leaf_like(one.expand(old.dims()), old)
}

/// `t` with the autodiff context of `like`: plain when `like` is, else autodiff with `like`'s
/// gradient-checkpointing strategy. A device read back from a tensor does not carry that strategy,
/// and tensors of two strategies cannot meet in one operation, so new parameters take it from
/// their neighbours.
pub fn leaf_like<const D: usize, const E: usize>(t: Tensor<D>, like: &Tensor<E>) -> Tensor<D> {
    match like.gradient_checkpointing_strategy() {
        Some(strategy) => t.autodiff().with_gradient_checkpointing_strategy(strategy),
        None => t,
    }
}

fn linear<'a>(
    out: &mut Vec<(String, ParamRef<'a>)>,
    l: usize,
    lin: &'a mut Linear,
    w: LayerTensor,
    b: LayerTensor,
) {
    out.push((hf_names::layer(l, w), ParamRef::Two(&mut lin.weight)));
    if let Some(bias) = lin.bias.as_mut() {
        out.push((hf_names::layer(l, b), ParamRef::One(bias)));
    }
}

/// Every parameter with its Hugging Face name.
pub fn params_mut(m: &mut Transformer) -> Vec<(String, ParamRef<'_>)> {
    use LayerTensor::*;
    let mut out = vec![(hf_names::EMBED.to_string(), ParamRef::Two(&mut m.embed))];
    for (l, layer) in m.layers.iter_mut().enumerate() {
        out.push((
            hf_names::layer(l, InputNorm),
            ParamRef::One(&mut layer.input_norm.weight),
        ));
        // With sandwich norms HF's `post_attention_layernorm` is the attention output's norm and
        // the norm before the MLP is `pre_feedforward_layernorm`.
        match (layer.attn_out_norm.as_mut(), layer.mlp_out_norm.as_mut()) {
            (Some(attn_out), Some(mlp_out)) => {
                out.push((
                    hf_names::layer(l, PostAttentionNorm),
                    ParamRef::One(&mut attn_out.weight),
                ));
                out.push((
                    hf_names::layer(l, PreFeedforwardNorm),
                    ParamRef::One(&mut layer.post_attn_norm.weight),
                ));
                out.push((
                    hf_names::layer(l, PostFeedforwardNorm),
                    ParamRef::One(&mut mlp_out.weight),
                ));
            }
            _ => out.push((
                hf_names::layer(l, PostAttentionNorm),
                ParamRef::One(&mut layer.post_attn_norm.weight),
            )),
        }
        let a = &mut layer.attn;
        linear(&mut out, l, &mut a.q, Q, QBias);
        linear(&mut out, l, &mut a.k, K, KBias);
        linear(&mut out, l, &mut a.v, V, VBias);
        linear(&mut out, l, &mut a.o, O, OBias);
        if let (Some(qn), Some(kn)) = (a.q_norm.as_mut(), a.k_norm.as_mut()) {
            out.push((hf_names::layer(l, QNorm), ParamRef::One(&mut qn.weight)));
            out.push((hf_names::layer(l, KNorm), ParamRef::One(&mut kn.weight)));
        }
        let f = &mut layer.mlp;
        linear(&mut out, l, &mut f.gate, Gate, GateBias);
        linear(&mut out, l, &mut f.up, Up, UpBias);
        linear(&mut out, l, &mut f.down, Down, DownBias);
    }
    out.push((
        hf_names::FINAL_NORM.to_string(),
        ParamRef::One(&mut m.norm.weight),
    ));
    if let Some(head) = m.lm_head.as_mut() {
        out.push((hf_names::LM_HEAD.to_string(), ParamRef::Two(head)));
    }
    out
}

/// Every adapter matrix by its name without PEFT's `base_model.model.` prefix
/// (`model.layers.0.self_attn.q_proj.lora_A.weight`), A before B, in layer and target order.
pub fn adapter_params_mut(m: &mut Transformer) -> Vec<(String, ParamRef<'_>)> {
    let mut out = vec![];
    for (l, target, lin) in targets_mut(m) {
        if let Some(adapter) = lin.lora.as_mut() {
            let path = target.module_path(l);
            out.push((
                format!("{path}.lora_A.weight"),
                ParamRef::Two(&mut adapter.a),
            ));
            out.push((
                format!("{path}.lora_B.weight"),
                ParamRef::Two(&mut adapter.b),
            ));
        }
    }
    out
}

/// What training updates: the adapters when the model has any (its base is frozen), else
/// every parameter.
pub fn trainable_mut(m: &mut Transformer) -> Vec<(String, ParamRef<'_>)> {
    if has_adapters(m) {
        adapter_params_mut(m)
    } else {
        params_mut(m)
    }
}
