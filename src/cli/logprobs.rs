//! `wgspin logprobs`: response log-probabilities as the SPIN trainer computes them.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

use wgspin::train::score::{ScoreOptions, TokenizedPair, score_all};
use wgspin::{ModelBundle, data, fsutil};

use super::args::{DeviceArgs, ModelArgs};

/// Log-probabilities of responses given prompts, as the SPIN trainer computes them.
///
/// Input: JSONL rows {"prompt": str, "response": str}, or conversations (chat `messages`,
/// ShareGPT), whose last assistant turn is scored given every turn before it. Output: JSONL rows
/// {"index", "logprob", "tokens", "token_logprobs"} in input order. The prompt is rendered
/// with the model's chat template (add_generation_prompt) and the response gets eos appended.
#[derive(Args, Debug)]
pub struct LogprobsArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// JSONL file of {"prompt", "response"} rows.
    #[arg(long)]
    data: PathBuf,
    /// Output JSONL file (stdout when omitted).
    #[arg(long)]
    out: Option<PathBuf>,
    #[command(flatten)]
    device: DeviceArgs,
    /// Examples (sequences) per forward pass.
    #[arg(long, default_value_t = ScoreOptions::default().batch_size)]
    batch_size: usize,
}

impl LogprobsArgs {
    pub fn run(self) -> Result<()> {
        anyhow::ensure!(self.batch_size > 0, "--batch-size must be at least 1");
        let dev = self.device.select()?;
        let rows = data::read_prompt_responses(&self.data)?;
        let model_dir = &self.model.model;
        let bundle = ModelBundle::load(model_dir, &dev.device)
            .with_context(|| format!("loading model {}", model_dir.display()))?;
        let tok = &bundle.tokenizer;
        let pairs = rows
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let p = TokenizedPair::chat(tok, &r.history, &r.prompt, &r.response)
                    .with_context(|| format!("{}:{}: tokenizing", self.data.display(), i + 1))?;
                let len = p.prompt.len() + p.response.len();
                if let Some(ctx) = tok.context().filter(|&c| len > c) {
                    anyhow::bail!(
                        "{}:{}: prompt + response are {len} tokens, more than the model's context \
                         ({ctx}, max_position_embeddings); shorten this row",
                        self.data.display(),
                        i + 1
                    );
                }
                Ok(p)
            })
            .collect::<Result<Vec<_>>>()?;
        let total = pairs.len();
        let mut done = 0;
        let start = std::time::Instant::now();
        let options = ScoreOptions {
            batch_size: self.batch_size,
            ..Default::default()
        };
        let scores = score_all(&bundle.model, &pairs, tok.pad_id(), options, |n| {
            done += n;
            eprintln!("scored {done}/{total}");
        })?;
        let secs = start.elapsed().as_secs_f64();
        let mut text = String::new();
        for (i, lp) in scores.iter().enumerate() {
            let sum: f64 = lp.iter().map(|&x| x as f64).sum();
            let row = serde_json::json!({"index": i, "logprob": sum, "tokens": lp.len(), "token_logprobs": lp});
            text.push_str(&row.to_string());
            text.push('\n');
        }
        match &self.out {
            Some(path) => fsutil::write_atomic(path, text.as_bytes())?,
            None => std::io::stdout().write_all(text.as_bytes())?,
        }
        eprintln!("scored {total} sequences in {secs:.2}s");
        Ok(())
    }
}
