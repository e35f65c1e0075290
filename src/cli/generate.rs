//! `wgspin generate`: the opponent writes a response for every SFT prompt (SPIN's pairs).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;

use wgspin::ModelBundle;
use wgspin::data::SftExample;
use wgspin::generate::GenOptions;
use wgspin::generate::job::{GenModel, GenSummary, Opponent, run_generate_with};
use wgspin::generate::server::ServerClient;
use wgspin::load::ModelSource;
use wgspin::load::bundle::{read_source_text_side, stop_ids};
use wgspin::model::precision::set_compute;
use wgspin::report::progress::Progress;

use super::args::{DtypeArgs, JobArgs, SamplingArgs, ServerArgs};

/// The opponent's turn: sample a response for every SFT prompt, written as SPIN pairs.
///
/// Output JSONL rows {"id", "real": [every turn of the prompt, human answer], "generated":
/// [every turn of the prompt, generated answer], "finish_reason": "eos"|"length",
/// "generated_tokens"}, in input order; a conversation's prompt is every turn before its last
/// assistant turn. Rows are flushed as they finish; rerunning the same command after an
/// interruption keeps them (and generates again any row whose prompt or answer changed in the
/// data) and generates only the rest.
#[derive(Args, Debug)]
pub struct GenerateArgs {
    #[command(flatten)]
    job: JobArgs,
    /// Output JSONL file (SPIN format).
    #[arg(long)]
    out: PathBuf,
    /// Replace --out (and its run record) instead of continuing it, or refusing rows made by
    /// another model or sampler, or a file generate did not write.
    #[arg(long)]
    overwrite: bool,
    /// Use only the first N examples.
    #[arg(long)]
    limit: Option<usize>,
    #[command(flatten)]
    sampling: SamplingArgs,
    #[command(flatten)]
    dtype: DtypeArgs,
    #[command(flatten)]
    server: ServerArgs,
}

impl GenerateArgs {
    pub fn run(self) -> Result<()> {
        let record = wgspin::generate::job::run_record_path(&self.out);
        self.job
            .check_outputs(&[("--out", &self.out), ("--out (its run record)", &record)])?;
        wgspin::outputs::check_file("--out", &self.out, true)?;
        if let Some(opts) = self.server.options() {
            return self.run_on_server(opts);
        }
        let dev = self.job.device.select()?;
        // Checked before the data and the model load: f16 on a GPU without it is refused.
        let dtype = self.dtype.resolve(&dev)?;
        let examples = self.job.data.load(self.limit)?;
        let path = &self.job.model.model;
        let mut bundle = ModelBundle::load(path, &dev.device)
            .with_context(|| format!("loading model {}", path.display()))?;
        set_compute(&mut bundle.model, dtype);
        let rows = self.sampling.gen_batch_size(&dev, &bundle.config, dtype)?;
        let opts = self
            .sampling
            .options(rows, bundle.stop_ids(), bundle.tokenizer.pad_id());
        let model = GenModel::local(&bundle);
        generate_into(&model, &examples, &self.out, &opts, self.overwrite)?;
        Ok(())
    }

    /// The same job with the responses from a server: only the tokenizer side of --model loads.
    fn run_on_server(&self, opts: wgspin::generate::server::ServerOptions) -> Result<()> {
        let examples = self.job.data.load(self.limit)?;
        let path = &self.job.model.model;
        // What --model names, probed once: its text side here, its identity in the run record.
        let (source, config, tokenizer) = ModelSource::resolve(path)
            .and_then(|s| read_source_text_side(&s).map(|(c, t)| (s, c, t)))
            .with_context(|| format!("reading the tokenizer of {}", path.display()))?;
        let url = opts.url.clone();
        let client = ServerClient::connect(opts).with_context(|| format!("connecting to {url}"))?;
        eprintln!(
            "generating on {url} (model {})",
            client.model().unwrap_or("not named by the server")
        );
        let gen_opts = self
            .sampling
            .options(1, stop_ids(&config, &tokenizer), tokenizer.pad_id());
        let model = GenModel {
            tokenizer: &tokenizer,
            source,
            opponent: Opponent::Server(&client),
        };
        generate_into(&model, &examples, &self.out, &gen_opts, self.overwrite)?;
        Ok(())
    }
}

/// Generates for `examples` into `out` with a progress bar; resumes a partial `out`.
fn generate_into(
    model: &GenModel,
    examples: &[SftExample],
    out: &Path,
    opts: &GenOptions,
    overwrite: bool,
) -> Result<GenSummary> {
    let mut bar = Progress::new("generate", examples.len());
    let summary = run_generate_with(model, examples, out, opts, overwrite, |p| {
        let rate = p.tokens as f64 / p.elapsed.as_secs_f64().max(1e-9);
        bar.update(p.done, &format!("prompts, {rate:.1} tok/s"));
    })
    .with_context(|| format!("generating into {}", out.display()))?;
    bar.finish();
    if summary.resumed > 0 {
        eprintln!(
            "{}: kept {} rows from an earlier run",
            out.display(),
            summary.resumed
        );
    }
    if summary.regenerated > 0 {
        eprintln!(
            "{}: regenerated {} rows whose prompt or response changed in the data",
            out.display(),
            summary.regenerated
        );
    }
    eprintln!(
        "generated {} responses, {} tokens in {:.1}s ({:.1} tok/s); finished: {} eos, {} length",
        summary.generated,
        summary.tokens,
        summary.seconds,
        summary.tokens_per_second(),
        summary.finished_eos,
        summary.finished_length
    );
    if summary.truncated_prompts > 0 {
        eprintln!(
            "warning: {} prompts were longer than the model's context leaves with \
             --max-new-tokens {}; they kept their last tokens",
            summary.truncated_prompts, opts.max_new_tokens
        );
    }
    Ok(summary)
}
