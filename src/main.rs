//! The `wgspin` command line: argument parsing and user-facing output; the work is in the library.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

mod cli;

use wgspin::data::DataFormat;
use wgspin::device::{self, DeviceSpec};
use wgspin::score::{ScoreOptions, TokenizedPair, score_all};
use wgspin::{ModelBundle, data, fsutil};

#[derive(Parser)]
#[command(
    name = "wgspin",
    version,
    about = "SPIN (Self-Play fIne-tuNing) of small language models on any GPU wgpu reaches, with a CPU fallback"
)]
struct Cli {
    /// Without a subcommand, runs `wgspin demo`.
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// List the GPU adapters wgpu can use (index for --device gpu:N, backend, type, f16 support).
    Devices,
    /// Log-probabilities of responses given prompts, as the SPIN trainer computes them.
    ///
    /// Input: JSONL rows {"prompt": str, "response": str}. Output: JSONL rows
    /// {"index", "logprob", "tokens", "token_logprobs"} in input order. The prompt is rendered
    /// with the model's chat template (add_generation_prompt) and the response gets eos appended.
    Logprobs {
        /// Hugging Face model folder (config.json, tokenizer.json, *.safetensors) or a .gguf file.
        #[arg(long)]
        model: PathBuf,
        /// JSONL file of {"prompt", "response"} rows.
        #[arg(long)]
        data: PathBuf,
        /// Output JSONL file (stdout when omitted).
        #[arg(long)]
        out: Option<PathBuf>,
        /// auto (a hardware GPU, else the CPU backend), gpu (any adapter, software too), gpu:N (see `wgspin devices`) or cpu.
        #[arg(long, default_value = "auto")]
        device: DeviceSpec,
        /// Sequences per forward pass.
        #[arg(long, default_value_t = 8)]
        batch_size: usize,
    },
    /// The opponent's turn: sample a response for every SFT prompt, written as SPIN pairs.
    ///
    /// Output JSONL rows {"id", "real": [user, assistant], "generated": [user, assistant],
    /// "finish_reason": "eos"|"length", "generated_tokens"}, in input order. Rows are flushed as
    /// they finish; rerunning the same command after an interruption keeps them and generates
    /// only the rest.
    Generate {
        /// Hugging Face model folder (config.json, tokenizer.json, *.safetensors) or a .gguf file.
        #[arg(long)]
        model: PathBuf,
        /// SFT data: JSONL or Parquet with prompt/response, chat `messages`, SPIN
        /// `real`/`generated` or ShareGPT `conversations` rows.
        #[arg(long)]
        data: PathBuf,
        /// Row shape of --data: auto, prompt-response, messages, spin, sharegpt.
        #[arg(long, default_value = "auto")]
        format: DataFormat,
        /// Output JSONL file (SPIN format).
        #[arg(long)]
        out: PathBuf,
        /// Only the first N examples.
        #[arg(long)]
        limit: Option<usize>,
        /// auto (a hardware GPU, else the CPU backend), gpu (any adapter, software too), gpu:N (see `wgspin devices`) or cpu.
        #[arg(long, default_value = "auto")]
        device: DeviceSpec,
        /// Prompts decoded together (continuous batching). Default: 8 on the CPU backend and on
        /// software adapters; on a GPU as many as its memory holds (up to 128).
        #[arg(long)]
        batch_size: Option<usize>,
        #[command(flatten)]
        sampling: cli::GenFlags,
        /// TOML file with any of these flags as keys (flags given here override it).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// The main player's turn: SPIN training on (prompt, real, generated) pairs.
    ///
    /// The input model is both the starting point and the frozen reference (the opponent θ_t);
    /// its log-probs of every pair are computed once and cached in --out. Writes
    /// metrics.jsonl, train_config.json and checkpoint/ (Hugging Face layout) into --out.
    Train {
        /// Hugging Face model folder of θ_t.
        #[arg(long)]
        model: PathBuf,
        /// SPIN pairs: the output of `wgspin generate`, or JSONL/Parquet rows with
        /// "real" and "generated" conversations.
        #[arg(long)]
        pairs: PathBuf,
        /// Row shape of --pairs (auto detects SPIN rows).
        #[arg(long, default_value = "auto")]
        format: DataFormat,
        /// Output folder.
        #[arg(long)]
        out: PathBuf,
        /// Continue the run in --out from its last checkpoint.
        #[arg(long)]
        resume: bool,
        /// Seed of the data order.
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// auto (a hardware GPU, else the CPU backend), gpu (any adapter, software too), gpu:N (see `wgspin devices`) or cpu.
        #[arg(long, default_value = "auto")]
        device: DeviceSpec,
        #[command(flatten)]
        train: cli::TrainFlags,
        /// TOML file with any of these flags as keys (flags given here override it).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// The self-play loop: per iteration, generate with θ_t, train θ_{t+1} on the pairs of t and
    /// t−1, evaluate on held-out prompts; stop early when the player can no longer tell real from
    /// generated. Rerun the same command to resume after an interruption.
    ///
    /// Layout: OUT/iter-T/{generated.jsonl, ref_logps.jsonl, metrics.jsonl, checkpoint/,
    /// eval_generated.jsonl, eval.json}, OUT/summary.json, OUT/spin_config.json.
    Spin {
        /// Hugging Face model folder of the SFT model θ_0.
        #[arg(long)]
        model: PathBuf,
        /// SFT data (JSONL or Parquet; prompt/response, messages, SPIN or ShareGPT rows). The
        /// last 10% (at most 64, see --eval-size) are held out for evaluation.
        #[arg(long)]
        data: PathBuf,
        /// Row shape of --data: auto, prompt-response, messages, spin, sharegpt.
        #[arg(long, default_value = "auto")]
        format: DataFormat,
        /// Output folder.
        #[arg(long)]
        out: PathBuf,
        /// Self-play iterations.
        #[arg(long, default_value_t = 3)]
        iterations: usize,
        /// Use only the first N training prompts.
        #[arg(long)]
        prompts: Option<usize>,
        /// Train iteration t on the pairs of t and t−1 together (as the paper).
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
        mix_previous: bool,
        /// Stop when held-out reward accuracy of an iteration is at most this.
        #[arg(long, default_value_t = 0.55)]
        stop_accuracy: f64,
        /// Held-out examples (default: 10% of the data, at most 64).
        #[arg(long)]
        eval_size: Option<usize>,
        /// Prompts decoded together during generation. Default: 8 on the CPU backend and on
        /// software adapters; on a GPU as many as its memory holds (up to 128).
        #[arg(long)]
        gen_batch_size: Option<usize>,
        /// auto (a hardware GPU, else the CPU backend), gpu (any adapter, software too), gpu:N (see `wgspin devices`) or cpu.
        #[arg(long, default_value = "auto")]
        device: DeviceSpec,
        #[command(flatten)]
        sampling: cli::GenFlags,
        #[command(flatten)]
        train: cli::TrainFlags,
        /// TOML file with any of these flags as keys (flags given here override it).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Supervised fine-tuning (next-token loss on response tokens) on prompt/response data.
    ///
    /// Writes metrics.jsonl and checkpoint/ (Hugging Face layout) into --out. The SPIN-only
    /// flags (--loss, --beta) are ignored.
    Sft {
        /// Hugging Face model folder.
        #[arg(long)]
        model: PathBuf,
        /// SFT data (JSONL or Parquet; prompt/response, messages, SPIN or ShareGPT rows).
        #[arg(long)]
        data: PathBuf,
        #[arg(long, default_value = "auto")]
        format: DataFormat,
        /// Output folder.
        #[arg(long)]
        out: PathBuf,
        /// Seed of the data order.
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// auto (a hardware GPU, else the CPU backend), gpu (any adapter, software too), gpu:N (see `wgspin devices`) or cpu.
        #[arg(long, default_value = "auto")]
        device: DeviceSpec,
        #[command(flatten)]
        train: cli::TrainFlags,
        /// TOML file with any of these flags as keys (flags given here override it).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// The built-in demo (also what `wgspin` runs without a subcommand): a tiny Llama learns to
    /// shift letters (cat → dbu); a short SFT makes a weak model, then SPIN iterations run against
    /// continued SFT with the same compute. Prints a table per stage and writes OUT/report.svg.
    Demo {
        /// Output folder (data, models, metrics, report.svg).
        #[arg(long, default_value = "wgspin-demo")]
        out: PathBuf,
        /// Reduced mode (fewer examples and steps, one seed), for CI and a first look.
        #[arg(long)]
        quick: bool,
        /// Number of seeds (default: 3, or 1 with --quick).
        #[arg(long)]
        seeds: Option<usize>,
        /// Learning rate of the SPIN iterations and of the continued SFT they are compared with
        /// (default 1e-4).
        #[arg(long)]
        lr: Option<f64>,
        /// SPIN's β (default 0.1).
        #[arg(long)]
        beta: Option<f64>,
        /// SPIN iterations (default 3).
        #[arg(long)]
        iterations: Option<usize>,
        /// auto (a hardware GPU, else the CPU backend), gpu (any adapter, software too), gpu:N (see `wgspin devices`) or cpu.
        #[arg(long, default_value = "auto")]
        device: DeviceSpec,
    },
    /// Draws OUT/report.svg for the output folder of `wgspin spin` or `wgspin train`:
    /// loss, reward margins and accuracy per step, held-out reward accuracy per iteration.
    Plot {
        /// The --out folder of a run.
        run_dir: PathBuf,
    },
    /// Convert a GGUF model (llama / qwen2) to a Hugging Face folder (weights dequantized).
    Convert {
        /// The .gguf file.
        #[arg(long)]
        model: PathBuf,
        /// Output folder (must not exist; written atomically).
        #[arg(long)]
        out: PathBuf,
        /// Storage type of model.safetensors: f32, f16 or bf16.
        #[arg(long, default_value = "f32")]
        dtype: String,
    },
    /// Export a Hugging Face folder to a GGUF file that llama.cpp loads.
    ExportGguf {
        /// Hugging Face model folder.
        #[arg(long)]
        model: PathBuf,
        /// Output .gguf file (written atomically).
        #[arg(long)]
        out: PathBuf,
        /// Matrix type: f16, f32 or q8_0 (norms stay f32).
        #[arg(long, default_value = "f16")]
        dtype: wgspin::gguf::writer::ExportDtype,
    },
    /// Benchmarks: each WGSL kernel against its burn-ops / sort-based twin, side by side.
    #[command(subcommand)]
    Bench(cli::bench::BenchCommand),
}

/// Mesa's Vulkan device-select layer (an implicit layer on most Linux distributions) connects to
/// the Wayland/X display to reorder GPUs, and on a headless machine libwayland then prints
/// `error: XDG_RUNTIME_DIR is invalid or not set in the environment.` although nothing failed.
/// wgspin ranks adapters itself (`device::choose`), so the layer is switched off unless the
/// user set its switch or asked it for a GPU (`DRI_PRIME`).
fn quiet_graphics_stack() {
    #[cfg(target_os = "linux")]
    if std::env::var_os("NODEVICE_SELECT").is_none() && std::env::var_os("DRI_PRIME").is_none() {
        // SAFETY: called first thing in `main`, before any other thread exists.
        unsafe { std::env::set_var("NODEVICE_SELECT", "1") };
    }
}

fn main() -> Result<()> {
    quiet_graphics_stack();
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let cmd = cli::config::apply(Cli::command(), &args)?;
    let matches = cmd.get_matches_from(&args);
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let command = cli.command.unwrap_or(Command::Demo {
        out: PathBuf::from("wgspin-demo"),
        quick: false,
        seeds: None,
        lr: None,
        beta: None,
        iterations: None,
        device: DeviceSpec::Auto,
    });
    match command {
        Command::Sft {
            model,
            data,
            format,
            out,
            seed,
            device,
            train,
            config: _,
        } => cli::sft::run(model, data, format, out, seed, device, train),
        Command::Demo {
            out,
            quick,
            seeds,
            lr,
            beta,
            iterations,
            device,
        } => cli::demo::run(out, quick, seeds, lr, beta, iterations, device),
        Command::Plot { run_dir } => {
            let path = wgspin::plot::report_for_run(&run_dir)?;
            println!("{}", path.display());
            Ok(())
        }
        Command::Devices => devices(),
        Command::Logprobs {
            model,
            data,
            out,
            device,
            batch_size,
        } => logprobs(model, data, out, device, batch_size),
        Command::Generate {
            model,
            data,
            format,
            out,
            limit,
            device,
            batch_size,
            sampling,
            config: _,
        } => cli::generate::run(
            model, data, format, out, limit, device, sampling, batch_size,
        ),
        Command::Train {
            model,
            pairs,
            format,
            out,
            resume,
            seed,
            device,
            train,
            config: _,
        } => cli::train::run(model, pairs, format, out, resume, seed, device, train),
        Command::Spin {
            model,
            data,
            format,
            out,
            iterations,
            prompts,
            mix_previous,
            stop_accuracy,
            eval_size,
            gen_batch_size,
            device,
            sampling,
            train,
            config: _,
        } => cli::spin::run(cli::spin::SpinArgs {
            model,
            data,
            format,
            out,
            device,
            gen_batch_size,
            spin: wgspin::spin::SpinConfig {
                iterations,
                prompts,
                mix_previous,
                stop_accuracy,
                eval_size,
                gen_batch_size: 0,
            },
            sampling,
            train,
        }),
        Command::Convert { model, out, dtype } => {
            let dtype = match dtype.as_str() {
                "f32" => wgspin::weights::StoredDtype::F32,
                "f16" => wgspin::weights::StoredDtype::F16,
                "bf16" => wgspin::weights::StoredDtype::BF16,
                other => anyhow::bail!("--dtype {other:?}: expected f32, f16 or bf16"),
            };
            let g = wgspin::gguf::GgufModel::load(&model)
                .with_context(|| format!("reading {}", model.display()))?;
            g.write_hf_folder(&out, dtype)?;
            eprintln!("wrote {}", out.display());
            Ok(())
        }
        Command::ExportGguf { model, out, dtype } => {
            wgspin::gguf::writer::export_hf_folder(&model, &out, dtype)
                .with_context(|| format!("exporting {}", model.display()))?;
            eprintln!("wrote {}", out.display());
            Ok(())
        }
        Command::Bench(cmd) => cli::bench::run(cmd),
    }
}

fn devices() -> Result<()> {
    let adapters = device::list_adapters();
    let auto = device::auto_choice(&adapters);
    if adapters.is_empty() {
        println!("No GPU adapter found. Commands run on the CPU backend (--device auto or cpu).");
        println!("On Linux, `apt-get install mesa-vulkan-drivers` gives a software Vulkan device.");
    } else {
        println!(
            "{:<7} {:<40} {:<8} {:<11} {:<4} driver",
            "device", "name", "backend", "type", "f16"
        );
        for a in &adapters {
            println!(
                "gpu:{:<3} {:<40} {:<8} {:<11} {:<4} {}{}",
                a.index,
                a.name,
                format!("{:?}", a.backend),
                a.type_name(),
                if a.shader_f16 { "yes" } else { "no" },
                a.driver,
                if auto == Some(a.index) {
                    "  <- auto"
                } else {
                    ""
                }
            );
        }
    }
    println!(
        "cpu     burn CPU backend (always available){}",
        if auto.is_none() { "  <- auto" } else { "" }
    );
    match wgspin::runtime_cache::cache_root() {
        Some(dir) => println!(
            "kernel cache: {} (autotune results per adapter and driver; delete to clear; \
             {} relocates it)",
            dir.display(),
            wgspin::runtime_cache::CACHE_DIR_ENV
        ),
        None => println!("kernel cache: none (no user cache directory; results kept in memory)"),
    }
    Ok(())
}

fn logprobs(
    model_dir: PathBuf,
    data_path: PathBuf,
    out: Option<PathBuf>,
    spec: DeviceSpec,
    batch_size: usize,
) -> Result<()> {
    if batch_size == 0 {
        anyhow::bail!("--batch-size must be at least 1");
    }
    let dev = cli::select_device(spec)?;
    let rows = data::read_prompt_responses(&data_path)?;
    let bundle = ModelBundle::load(&model_dir, &dev.device)
        .with_context(|| format!("loading model {}", model_dir.display()))?;
    let tok = &bundle.tokenizer;
    let pairs = rows
        .iter()
        .enumerate()
        .map(|(i, r)| {
            TokenizedPair::new(tok, &r.prompt, &r.response)
                .with_context(|| format!("{}:{}: tokenizing", data_path.display(), i + 1))
        })
        .collect::<Result<Vec<_>>>()?;
    let pad = tok.pad_id();
    let total = pairs.len();
    let mut done = 0;
    let start = std::time::Instant::now();
    let scores = score_all(
        &bundle.model,
        &pairs,
        pad,
        ScoreOptions {
            batch_size,
            ..Default::default()
        },
        |n| {
            done += n;
            eprintln!("scored {done}/{total}");
        },
    )?;
    let secs = start.elapsed().as_secs_f64();
    let mut text = String::new();
    for (i, lp) in scores.iter().enumerate() {
        let sum: f64 = lp.iter().map(|&x| x as f64).sum();
        let row = serde_json::json!({"index": i, "logprob": sum, "tokens": lp.len(), "token_logprobs": lp});
        text.push_str(&row.to_string());
        text.push('\n');
    }
    match out {
        Some(path) => fsutil::write_atomic(&path, text.as_bytes())?,
        None => std::io::stdout().write_all(text.as_bytes())?,
    }
    eprintln!("scored {total} sequences in {secs:.2}s");
    Ok(())
}
