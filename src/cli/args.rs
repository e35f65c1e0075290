//! Flag groups that several commands share, each defined once and flattened where used, and
//! what they resolve to (the device, the data, the decode batch).

use std::path::PathBuf;
use std::sync::OnceLock;

use anyhow::{Context, Result};
use clap::Args;
use wgspin::load::source::adapter_base;

use wgspin::data::{DataFormat, ReadOptions, SftExample, Turns, read_files};
use wgspin::device::{self, ComputeDevice, DeviceSpec};
use wgspin::generate::GenOptions;
use wgspin::generate::server::{API_KEY_ENV, ServerApi, ServerOptions};
use wgspin::hf::config::ModelConfig;
use wgspin::hf::hub_data::{DataId, HubData};
use wgspin::kernels::sample::SamplingParams;
use wgspin::model::precision::{Precision, dtype_name};

/// `--model`: what every command that runs a model reads.
#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// Hugging Face model folder (config.json, tokenizer.json, *.safetensors), a .gguf file, a
    /// PEFT LoRA adapter folder (on the base its adapter_config.json names), or a Hub id
    /// ORG/NAME[@REVISION] (from the Hugging Face cache, downloading what it lacks unless
    /// HF_HUB_OFFLINE=1; a local path of that name wins).
    #[arg(long, value_parser = model_path)]
    pub model: PathBuf,
}

/// A model flag's value: a path as given when it exists or is not a Hub id, else the Hub
/// model's folder in the Hugging Face cache (see `wgspin::hf::hub`), with download progress on
/// stderr.
pub fn model_path(arg: &str) -> Result<PathBuf, String> {
    let path = PathBuf::from(arg);
    let Some(id) = (!path.exists())
        .then(|| wgspin::hf::hub::parse_id(arg))
        .flatten()
    else {
        return Ok(path);
    };
    let settings = wgspin::hf::hub::HubSettings::from_env();
    wgspin::hf::hub::resolve_model(&id, &settings, &mut super::hub::progress(&id))
        .map_err(|e| format!("no local file or folder {arg:?}; as a Hugging Face Hub id: {e}"))
}

/// `--device`.
#[derive(Args, Debug, Clone)]
pub struct DeviceArgs {
    /// auto (a hardware GPU, else the CPU backend), gpu (any adapter, software too), gpu:N (see
    /// `wgspin devices`) or cpu.
    #[arg(long, default_value = "auto")]
    pub device: DeviceSpec,
}

impl DeviceArgs {
    /// The device, announced on stderr (every command says where it runs, and why when `auto`
    /// passed an adapter over), with where cubecl's autotune cache for it lives.
    pub fn select(&self) -> Result<ComputeDevice> {
        let dev = device::select(self.device)?;
        match &dev.note {
            Some(why) => eprintln!("device: {} ({why})", dev.description),
            None => eprintln!("device: {}", dev.description),
        }
        if let Some(c) = &dev.cache {
            let state = if c.reused {
                "reused: autotune results of earlier runs"
            } else {
                "new: this run autotunes and fills it"
            };
            eprintln!("kernel cache: {} ({state})", c.path.display());
        }
        Ok(dev)
    }
}

/// `--dtype` of the commands that run a model without training it (`generate`, `bench
/// generate`); the training commands take theirs from
/// [`wgspin::train::TrainConfig`], which records it with the run's other settings.
#[derive(Args, Debug, Clone)]
pub struct DtypeArgs {
    /// Compute dtype: auto (f16 on a GPU whose WGSL has shader-f16; f32 on other GPUs and on the
    /// CPU backend), f32 or f16. With f16 the weights are stored in f16 once at load and the
    /// activations and KV cache run in it (half the memory and bytes read); norm statistics,
    /// attention softmax and all accumulation stay f32, and logits, sampling and log-probs are
    /// f32. Local generation only (a --server decides its own).
    #[arg(long, default_value_t = Precision::Auto)]
    pub dtype: Precision,
}

impl DtypeArgs {
    /// The dtype on `dev`, announced on stderr when `auto` chose it.
    pub fn resolve(&self, dev: &ComputeDevice) -> Result<burn::tensor::DType> {
        resolve_dtype(self.dtype, dev)
    }
}

/// `dtype` on `dev`, announced on stderr when `auto` chose it (a run's speed and memory, and
/// near-ties of its outputs, depend on it).
pub fn resolve_dtype(dtype: Precision, dev: &ComputeDevice) -> Result<burn::tensor::DType> {
    let resolved = dtype.resolve(&dev.device)?;
    if dtype == Precision::Auto {
        eprintln!(
            "dtype: {} (auto; pass --dtype to change it)",
            dtype_name(resolved)
        );
    }
    Ok(resolved)
}

/// What the job commands (`generate`, `train`, `spin`, `sft`) read: the model, the data, the
/// device, and optionally a TOML file of their flags.
#[derive(Args, Debug, Clone)]
pub struct JobArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub data: DataArgs,
    #[command(flatten)]
    pub device: DeviceArgs,
    /// TOML file with any of this command's flags as keys (flags given on the command line
    /// override it).
    #[arg(long)]
    pub config: Option<PathBuf>,
}

impl JobArgs {
    /// Refuses each output (given as its flag) that is, contains or lies inside what the job
    /// reads: the model (an adapter's base too), the data or the --config file.
    pub fn check_outputs(&self, outputs: &[(&str, &std::path::Path)]) -> Result<()> {
        let mut inputs = wgspin::outputs::Inputs::new();
        let model = &self.model.model;
        inputs.add_model("--model", model, adapter_base(model).as_deref());
        self.data.source.add_inputs(&mut inputs);
        if let Some(c) = &self.config {
            inputs.add("--config", c);
        }
        for (flag, out) in outputs {
            inputs.check(flag, out)?;
        }
        Ok(())
    }
}

/// `--out`, `--resume` and `--overwrite` of the training commands (`train`, `sft`).
#[derive(Args, Debug, Clone)]
pub struct TrainOutArgs {
    /// Output folder.
    #[arg(long)]
    pub out: PathBuf,
    /// Continue the run in --out from its last checkpoint (written every --save-every steps);
    /// only with the same model, data and settings.
    #[arg(long, conflicts_with = "overwrite")]
    pub resume: bool,
    /// Start over: remove the run in --out (its checkpoint, metrics, settings and reference
    /// log-probs; other files there are kept) instead of refusing it.
    #[arg(long)]
    pub overwrite: bool,
}

impl TrainOutArgs {
    pub fn existing(&self) -> wgspin::train::job::Existing {
        use wgspin::train::job::Existing;
        match (self.resume, self.overwrite) {
            (true, _) => Existing::Resume,
            (false, true) => Existing::Overwrite,
            (false, false) => Existing::Refuse,
        }
    }
}

/// What a checkpoint's model card records of this run beyond its settings: the data as named
/// (a Hub dataset with its commit and split) and the command line.
pub fn run_notes(
    data: String,
    report_to: wgspin::report::ReportTo,
) -> wgspin::train::card::RunNotes {
    wgspin::train::card::RunNotes {
        data: Some(data),
        command: Some(command_line()),
        iteration: None,
        report_to,
    }
}

/// This process's command line as a shell would take it back (arguments with spaces or quotes
/// single-quoted, server credentials redacted).
pub fn command_line() -> String {
    let quote = |a: String| {
        if !a.is_empty()
            && a.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c))
        {
            a
        } else {
            format!("'{}'", a.replace('\'', "'\\''"))
        }
    };
    let args: Vec<String> = std::iter::once("wgspin".to_string())
        .chain(
            std::env::args_os()
                .skip(1)
                .map(|a| wgspin::generate::server::redact_credentials(&a.to_string_lossy()))
                .map(quote),
        )
        .collect();
    args.join(" ")
}

/// `--report-to`, of the training commands (`train`, `sft`, `spin`).
#[derive(Args, Debug, Clone)]
pub struct ReportArgs {
    /// Where training metrics go besides metrics.jsonl: none, or tensorboard (event files in
    /// OUT/runs/, or iter-T/runs/ under spin, with TRL's metric names: train/loss,
    /// train/rewards/chosen for real, train/rewards/rejected for generated, ...).
    #[arg(long, default_value = "none")]
    pub report_to: wgspin::report::ReportTo,
}

/// `--data` and where it comes from: a local file, or a split of a Hub dataset.
#[derive(Args, Debug, Clone)]
pub struct DataSourceArgs {
    /// JSONL or Parquet file, or a Hugging Face Hub dataset ORG/NAME[@REVISION][:SPLIT]: the
    /// split's Parquet / JSON lines files as `datasets.load_dataset` finds them (the dataset
    /// card's `configs`, else the file names), from the Hugging Face cache, downloading what it
    /// lacks unless HF_HUB_OFFLINE=1. A local path of that name wins.
    #[arg(long)]
    pub data: PathBuf,
    /// Split of a Hub --data (e.g. train_sft); default: the one after `:` in --data, else
    /// `train`, else its only split.
    #[arg(long)]
    pub split: Option<String>,
    /// Subset of a Hub --data (a `config_name` of its dataset card); default: the card's default.
    #[arg(long)]
    pub subset: Option<String>,
    /// --data resolved once (a Hub dataset's files are found, and downloaded, on first use).
    #[arg(skip)]
    resolved: OnceLock<Source>,
}

/// Where the rows of --data are.
#[derive(Debug, Clone)]
enum Source {
    Local(PathBuf),
    Hub(HubData),
}

impl DataSourceArgs {
    /// The Hub dataset --data names: not an existing path, but an ORG/NAME[@REV][:SPLIT].
    fn hub_id(&self) -> Option<DataId> {
        if self.data.exists() {
            return None;
        }
        self.data
            .to_str()
            .and_then(wgspin::hf::hub_data::parse_data_id)
    }

    /// Adds what --data reads to the inputs no output may touch: the file, or the dataset's
    /// folder in the Hub cache (known without asking the Hub).
    pub fn add_inputs(&self, inputs: &mut wgspin::outputs::Inputs) {
        match self.hub_id() {
            Some(d) => {
                let settings = wgspin::hf::hub::HubSettings::from_env();
                inputs.add("--data", &wgspin::hf::hub_data::cache_dir(&d.id, &settings));
            }
            None => {
                inputs.add("--data", &self.data);
            }
        }
    }

    fn resolve(&self) -> Result<&Source> {
        if let Some(s) = self.resolved.get() {
            return Ok(s);
        }
        let source = match self.hub_id() {
            Some(d) => {
                let settings = wgspin::hf::hub::HubSettings::from_env();
                let data = wgspin::hf::hub_data::resolve_dataset(
                    &d,
                    self.split.as_deref(),
                    self.subset.as_deref(),
                    &settings,
                    &mut super::hub::progress(&d.id),
                )
                .with_context(|| {
                    format!(
                        "--data {}: no local file of that name; as a Hugging Face Hub dataset",
                        self.data.display()
                    )
                })?;
                Source::Hub(data)
            }
            None => {
                for (flag, given) in [("--split", &self.split), ("--subset", &self.subset)] {
                    if let Some(v) = given {
                        anyhow::bail!(
                            "{flag} {v} applies to a Hugging Face Hub dataset, but --data {} is a local file",
                            self.data.display()
                        );
                    }
                }
                wgspin::manifest::refuse_if_being_written(&self.data)?;
                Source::Local(self.data.clone())
            }
        };
        Ok(self.resolved.get_or_init(|| source))
    }

    /// The files to read, in order (a Hub dataset's found and downloaded on the first call).
    pub fn files(&self) -> Result<Vec<PathBuf>> {
        Ok(match self.resolve()? {
            Source::Local(p) => vec![p.clone()],
            Source::Hub(h) => {
                eprintln!(
                    "--data {h}: {} file(s) in {}",
                    h.files.len(),
                    h.snapshot.display()
                );
                h.files.clone()
            }
        })
    }

    /// The Hub dataset --data resolved to, once it has (`None` for a local file).
    pub fn hub(&self) -> Option<&HubData> {
        match self.resolved.get() {
            Some(Source::Hub(h)) => Some(h),
            _ => None,
        }
    }

    /// --data as run records and messages name it: a Hub dataset with its commit and split.
    pub fn name(&self) -> String {
        match self.hub() {
            Some(h) => h.to_string(),
            None => self.data.display().to_string(),
        }
    }
}

/// `--data` with its row shape and turn: the training or prompt data.
#[derive(Args, Debug, Clone)]
pub struct DataArgs {
    #[command(flatten)]
    pub source: DataSourceArgs,
    /// Row shape of --data: auto, prompt-response, messages, spin or sharegpt.
    #[arg(long, default_value = "auto")]
    pub format: DataFormat,
    /// Which exchange of a multi-turn conversation is the example: last (the prompt is every
    /// turn before the last assistant turn) or first (the first user turn and its answer, as
    /// uclaml/SPIN trains on UltraChat).
    #[arg(long, value_enum, default_value_t = Turns::Last)]
    pub turns: Turns,
}

impl DataArgs {
    /// Reads the data, reports skipped rows on stderr, and keeps the first `limit` examples
    /// (reading stops there: the rest of a large dataset is never decoded).
    pub fn load(&self, limit: Option<usize>) -> Result<Vec<SftExample>> {
        anyhow::ensure!(limit != Some(0), "--limit 0: must be at least 1");
        let files = self.source.files()?;
        let name = self.source.name();
        let opts = ReadOptions {
            format: self.format,
            turns: self.turns,
            limit,
        };
        let ds = read_files(&files, opts).with_context(|| format!("reading data {name}"))?;
        if !ds.skipped.is_empty() {
            eprintln!(
                "{name}: skipped {} row(s) without a usable prompt/response:",
                ds.skipped.len()
            );
            for s in ds.skipped.iter().take(5) {
                match files.len() {
                    1 => eprintln!("  line {}: {}", s.line, s.reason),
                    _ => eprintln!(
                        "  {} row {}: {}",
                        ds.files[s.file].display(),
                        s.line,
                        s.reason
                    ),
                }
            }
            if ds.skipped.len() > 5 {
                eprintln!("  ... and {} more", ds.skipped.len() - 5);
            }
        }
        eprintln!(
            "{name}: {} examples ({} format{})",
            ds.examples.len(),
            ds.format,
            match self.turns {
                Turns::Last => String::new(),
                t => format!(", --turns {}", t.name()),
            }
        );
        if ds.repeated_prompts > 0 {
            eprintln!(
                "{name}: {} rows repeat an earlier row's prompt_id (the same prompt); their ids are \
                 numbered PROMPT_ID#2, #3, …",
                ds.repeated_prompts
            );
        }
        // Ties are legitimate pairs, but they add nothing to the gradient; a file of nothing else
        // (the opponent copied the data, or a reader bug) would train for nothing without a word.
        if ds.ties == ds.examples.len() {
            eprintln!(
                "warning: {name}: every one of the {} pairs is a tie (generated response = real \
                 response); training on it does nothing: gradient norm 0",
                ds.ties
            );
        } else if ds.ties > 0 {
            eprintln!(
                "{name}: {} of {} pairs are ties (generated response = real response)",
                ds.ties,
                ds.examples.len()
            );
        }
        Ok(ds.examples)
    }
}

/// How the opponent generates: the response length, the sampler and the decode batch.
#[derive(Args, Debug, Clone)]
pub struct SamplingArgs {
    /// Token limit per generated response.
    #[arg(long, default_value_t = GenOptions::default().max_new_tokens)]
    pub max_new_tokens: usize,
    #[command(flatten)]
    pub sampling: SamplingParams,
    /// Rows decoded together (continuous batching). Default: 8 on the CPU backend and on
    /// software adapters; on a GPU as many as its memory holds (up to 128).
    #[arg(long)]
    pub gen_batch_size: Option<usize>,
}

impl SamplingArgs {
    /// `--gen-batch-size`, or the device's default for this model computing in `dtype`
    /// (printed).
    pub fn gen_batch_size(
        &self,
        dev: &ComputeDevice,
        cfg: &ModelConfig,
        dtype: burn::tensor::DType,
    ) -> Result<usize> {
        match self.gen_batch_size {
            Some(0) => anyhow::bail!("--gen-batch-size must be at least 1"),
            Some(n) => Ok(n),
            None => {
                let n = wgspin::generate::batch::default_batch_size(
                    dev,
                    cfg,
                    self.max_new_tokens,
                    dtype,
                );
                eprintln!("decode batch: {n} rows (pass --gen-batch-size to change it)");
                Ok(n)
            }
        }
    }

    pub fn options(&self, batch_size: usize, stop_ids: Vec<u32>, pad_id: u32) -> GenOptions {
        GenOptions {
            batch_size,
            max_new_tokens: self.max_new_tokens,
            sampling: self.sampling,
            stop_ids,
            pad_id,
        }
    }
}

/// `--server` and its settings: generation on an OpenAI-compatible server instead of `--device`.
#[derive(Args, Debug, Clone)]
pub struct ServerArgs {
    /// Generate on this OpenAI-compatible server (vLLM, llama.cpp's llama-server,
    /// llama-cpp-python, ...), e.g. http://127.0.0.1:8080, instead of on --device. It must serve
    /// the --model, whose tokenizer and chat template render the prompts; its weights are not
    /// loaded. An API key is read from the environment variable WGSPIN_SERVER_API_KEY.
    #[arg(long)]
    pub server: Option<String>,
    /// Model name sent to the server. Default: the first model its /v1/models lists.
    #[arg(long, requires = "server")]
    pub server_model: Option<String>,
    /// completions: the prompt rendered by --model's chat template goes to /v1/completions (the
    /// same text local generation uses). chat: the user turn goes to /v1/chat/completions and the
    /// server applies its own template.
    #[arg(long, default_value = "completions")]
    pub server_api: ServerApi,
    /// Requests in flight at once on the server.
    #[arg(long, default_value_t = ServerOptions::DEFAULT_CONCURRENCY)]
    pub concurrency: usize,
    /// Retries of a request after a connection failure, timeout, HTTP 408/429 or 5xx (backoff
    /// from 0.5 s doubling to 30 s), before the run stops; a rerun continues it.
    #[arg(long, default_value_t = ServerOptions::DEFAULT_RETRIES)]
    pub server_retries: u32,
    /// Seconds to wait for one response.
    #[arg(long, default_value_t = ServerOptions::DEFAULT_TIMEOUT_S)]
    pub server_timeout: u64,
}

impl ServerArgs {
    /// The server settings, when --server is given.
    pub fn options(&self) -> Option<ServerOptions> {
        let url = self.server.clone()?;
        Some(ServerOptions {
            url,
            model: self.server_model.clone(),
            api: self.server_api,
            concurrency: self.concurrency,
            retries: self.server_retries,
            timeout: std::time::Duration::from_secs(self.server_timeout.max(1)),
            api_key: std::env::var(API_KEY_ENV).ok().filter(|k| !k.is_empty()),
        })
    }
}

/// `spin`'s server flags: `--server` and its settings, and how each iteration's model is served.
#[derive(Args, Debug, Clone)]
pub struct SpinServerArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    /// Command that serves a model at --server, started for each iteration's generation and
    /// stopped after it: {gguf} becomes θt written as a GGUF file, {model} its Hugging Face
    /// folder. E.g. "llama-server -m {gguf} --port 8080" or "vllm serve {model} --port 8080".
    /// Started directly, not through a shell. Needed for more than one iteration.
    #[arg(long, requires = "server")]
    pub server_cmd: Option<String>,
    /// Matrix type of the GGUF file written for --server-cmd.
    #[arg(long, default_value = "f16", requires = "server_cmd")]
    pub server_gguf_dtype: wgspin::gguf::writer::ExportDtype,
}

impl SpinServerArgs {
    pub fn spin_server(&self) -> Option<wgspin::generate::serve::SpinServer> {
        Some(wgspin::generate::serve::SpinServer {
            options: self.server.options()?,
            command: self.server_cmd.clone(),
            gguf_dtype: self.server_gguf_dtype,
        })
    }
}
