//! SFT's objective: next-token negative log-likelihood of the response tokens (prompt masked),
//! the mean per response token over each optimizer step, as transformers' SFT trainer takes it.

use burn::tensor::{DType, Tensor};

use super::{Measured, Pass, StepStats, TrainObjective};
use crate::error::Result;
use crate::train::score::TokenizedPair;

/// One (prompt, response) row per example.
pub const ROWS_PER_EXAMPLE: usize = 1;

/// The model card's "method" row.
pub const CARD_METHOD: &str = "SFT (next-token loss on response tokens)";

/// SFT over tokenized (prompt, response) examples.
pub struct Sft<'a> {
    pub seqs: &'a [TokenizedPair],
}

impl TrainObjective for Sft<'_> {
    fn len(&self) -> usize {
        self.seqs.len()
    }

    fn noun(&self) -> &'static str {
        "SFT examples"
    }

    fn lengths(&self) -> Vec<usize> {
        (0..self.seqs.len()).map(|i| self.tokens(i)).collect()
    }

    fn tokens(&self, i: usize) -> usize {
        self.seqs[i].prompt.len() + self.seqs[i].response.len()
    }

    /// The loss is the mean over the step's response tokens, whichever micro-batch they are in.
    fn step(&self, pass: &mut Pass, micro: &[Vec<usize>]) -> Result<Vec<Tensor<1>>> {
        let n_tokens: usize = micro
            .iter()
            .flatten()
            .map(|&i| self.seqs[i].response.len())
            .sum();
        let scale = pass.scale();
        let mut out = Vec::with_capacity(micro.len());
        for (k, idx) in micro.iter().enumerate() {
            let batch: Vec<TokenizedPair> = idx.iter().map(|&i| self.seqs[i].clone()).collect();
            let lp = pass.backward(&batch, k, |lp| {
                let loss = lp.clone().sum().neg();
                (loss.mul_scalar(scale / n_tokens.max(1) as f64), lp)
            })?;
            out.push(lp.inner().cast(DType::F32)); // [response tokens of the pass]
        }
        Ok(out)
    }

    fn measure(&self, micro: &[Vec<usize>], values: Vec<Vec<f32>>) -> Measured {
        let n_tokens: usize = micro
            .iter()
            .flatten()
            .map(|&i| self.seqs[i].response.len())
            .sum();
        let mut nll = 0.0;
        for lp in values {
            nll -= lp.iter().map(|&x| x as f64).sum::<f64>();
        }
        Measured::Nll {
            nll,
            tokens: n_tokens,
        }
    }

    fn stats(&self, measured: &Measured) -> StepStats {
        // Another objective's measurement has no loss of this one's.
        let loss = if let Measured::Nll { nll, tokens } = measured {
            nll / (*tokens).max(1) as f64
        } else {
            f64::NAN
        };
        StepStats::new(loss, vec![], String::new())
    }

    fn divergence(&self, _: &Measured, first_step: bool) -> (String, &'static str) {
        let cause = if first_step {
            "before any update: the starting weights, the config or the data are broken"
        } else {
            "training diverged: try a lower --lr or a --max-grad-norm"
        };
        (String::new(), cause)
    }
}
