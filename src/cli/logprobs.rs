//! `wgspin logprobs`: response log-probabilities as the SPIN trainer computes them.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use wgspin::load::source::adapter_base;

use wgspin::train::score::{ScoreOptions, TokenizedPair, score_all};
use wgspin::{ModelBundle, data, fsutil};

use super::args::{DataArgs, DeviceArgs, ModelArgs};

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
    /// Rows {"prompt", "response"}, or conversations (chat `messages`, ShareGPT) whose last
    /// assistant turn is scored (or first, with --turns first).
    #[command(flatten)]
    data: DataArgs,
    /// Output JSONL file (stdout when omitted; rows are written there as they are scored, and a
    /// reader that closes the pipe, like `head`, ends the run).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Replace --out if it exists (never the --model or --data).
    #[arg(long, requires = "out")]
    overwrite: bool,
    #[command(flatten)]
    device: DeviceArgs,
    /// Examples (sequences) per forward pass.
    #[arg(long, default_value_t = ScoreOptions::default().batch_size)]
    batch_size: usize,
}

/// Rows scored between writes to stdout.
const CHUNK: usize = 256;

impl LogprobsArgs {
    pub fn run(self) -> Result<()> {
        anyhow::ensure!(self.batch_size > 0, "--batch-size 0: must be at least 1");
        if let Some(out) = &self.out {
            let mut inputs = wgspin::outputs::Inputs::new();
            let model = &self.model.model;
            inputs.add_model("--model", model, adapter_base(model).as_deref());
            self.data.source.add_inputs(&mut inputs);
            inputs.check("--out", out)?;
            wgspin::outputs::check_file("--out", out, self.overwrite)?;
        }
        let dev = self.device.select()?;
        let files = self.data.source.files()?;
        let name = self.data.source.name();
        let rows = data::read_prompt_responses_from(&files, self.data.format, self.data.turns)?;
        let model_dir = &self.model.model;
        let bundle = ModelBundle::load(model_dir, &dev.device)
            .with_context(|| format!("loading model {}", model_dir.display()))?;
        let tok = &bundle.tokenizer;
        let pairs = rows
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let p = TokenizedPair::chat(tok, &r.history, &r.prompt, &r.response)
                    .with_context(|| format!("{}:{}: tokenizing", name, i + 1))?;
                let len = p.prompt.len() + p.response.len();
                if let Some(ctx) = tok.context().filter(|&c| len > c) {
                    anyhow::bail!(
                        "{}:{}: prompt + response are {len} tokens, more than the model's context \
                         ({ctx}, max_position_embeddings); shorten this row",
                        name,
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
        // Scored in input order, a chunk at a time, so rows reach stdout as they are ready and a
        // closed pipe stops the scoring (each chunk is still batched by length inside).
        let mut text = String::new();
        let mut stdout = std::io::stdout().lock();
        // Into a file: one pass (every row sorted by length together, the fastest batching).
        let chunk_len = if self.out.is_some() {
            pairs.len().max(1)
        } else {
            CHUNK
        };
        for (c, chunk) in pairs.chunks(chunk_len).enumerate() {
            let scores = score_all(&bundle.model, chunk, tok.pad_id(), options, |n| {
                done += n;
                eprintln!("scored {done}/{total}");
            })?;
            let mut rows = String::new();
            for (k, lp) in scores.iter().enumerate() {
                let sum: f64 = lp.iter().map(|&x| x as f64).sum();
                let row = serde_json::json!({"index": c * chunk_len + k, "logprob": sum, "tokens": lp.len(), "token_logprobs": lp});
                rows.push_str(&row.to_string());
                rows.push('\n');
            }
            if self.out.is_some() {
                text.push_str(&rows);
                continue;
            }
            match stdout
                .write_all(rows.as_bytes())
                .and_then(|()| stdout.flush())
            {
                Ok(()) => {}
                // The reader has what it wanted (`| head -1`): nothing left to do for it.
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
                Err(e) => return Err(anyhow::Error::new(e).context("writing to stdout")),
            }
        }
        if let Some(path) = &self.out {
            fsutil::write_atomic(path, text.as_bytes())?;
        }
        let secs = start.elapsed().as_secs_f64();
        eprintln!("scored {total} sequences in {secs:.2}s");
        Ok(())
    }
}
