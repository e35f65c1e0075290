//! The `wgspin` command line: one file per command, each a `#[derive(Args)]` struct whose
//! `run` does the user-facing part (flags, progress, messages) and calls the library for the
//! work. Flag groups shared between commands are in `args.rs`; the library's settings structs
//! (`TrainConfig`, `PairLoss`, `SpinConfig`, `SamplingParams`) are flattened in as they are, so
//! each flag and its default is defined once.

pub mod args;
pub mod bench;
pub mod config;
pub mod convert;
pub mod demo;
pub mod devices;
pub mod export_pairs;
pub mod generate;
pub mod hub;
pub mod logprobs;
pub mod merge;
pub mod plan;
pub mod report;
pub mod sft;
pub mod spin;
pub mod train;

use anyhow::Result;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "wgspin",
    version,
    about = "SPIN (Self-Play fIne-tuNing) of small language models on any GPU wgpu reaches, with a CPU fallback",
    after_help = "Without a command, `wgspin` runs the built-in demo (`wgspin demo`: a tiny model, \
                  about 3 minutes on a 2-core CPU, writes ./wgspin-demo)."
)]
pub struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    Devices(devices::DevicesArgs),
    Logprobs(logprobs::LogprobsArgs),
    Generate(generate::GenerateArgs),
    Train(train::TrainArgs),
    Spin(spin::SpinArgs),
    #[command(mut_arg("lr", |a| a.default_value(format!("{:e}", wgspin::train::SFT_LR))))]
    Sft(sft::SftArgs),
    Demo(demo::DemoArgs),
    Plot(convert::PlotArgs),
    Convert(convert::ConvertArgs),
    ExportGguf(convert::ExportGgufArgs),
    ExportPairs(export_pairs::ExportPairsArgs),
    Merge(merge::MergeArgs),
    Plan(plan::PlanArgs),
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

/// Parses the command line, with the `--config` file's values as the defaults of its flags.
pub fn parse(args: &[std::ffi::OsString]) -> Result<Cli> {
    let cmd = config::apply(Cli::command(), args)?;
    let matches = cmd.get_matches_from(args);
    Ok(Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit()))
}

impl Cli {
    pub fn run(self) -> Result<()> {
        match self.command {
            None => {
                eprintln!(
                    "no command given: running the built-in demo (`wgspin demo`); \
                     `wgspin --help` lists the commands"
                );
                Cli::try_parse_from(["wgspin", "demo"])?.run()
            }
            Some(Command::Devices(a)) => a.run(),
            Some(Command::Logprobs(a)) => a.run(),
            Some(Command::Generate(a)) => a.run(),
            Some(Command::Train(a)) => a.run(),
            Some(Command::Spin(a)) => a.run(),
            Some(Command::Sft(a)) => a.run(),
            Some(Command::Plan(a)) => a.run(),
            Some(Command::Demo(a)) => a.run(),
            Some(Command::Plot(a)) => a.run(),
            Some(Command::Convert(a)) => a.run(),
            Some(Command::ExportGguf(a)) => a.run(),
            Some(Command::ExportPairs(a)) => a.run(),
            Some(Command::Merge(a)) => a.run(),
            Some(Command::Bench(c)) => c.run(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_flag_of_every_command_has_help() {
        let cmd = Cli::command();
        cmd.clone().debug_assert();
        let mut stack: Vec<(String, clap::Command)> = vec![("wgspin".into(), cmd)];
        while let Some((path, c)) = stack.pop() {
            for a in c.get_arguments() {
                let id = a.get_id().as_str();
                if id != "help" && id != "version" {
                    assert!(a.get_help().is_some(), "{path} --{id} has no help text");
                }
            }
            for s in c.get_subcommands() {
                assert!(
                    s.get_about().is_some(),
                    "{path} {} has no about",
                    s.get_name()
                );
                stack.push((format!("{path} {}", s.get_name()), s.clone()));
            }
        }
    }

    fn default_of(cmd: &str, flag: &str) -> String {
        let c = Cli::command();
        let sub = c.find_subcommand(cmd).expect("command");
        let arg = sub
            .get_arguments()
            .find(|a| a.get_long() == Some(flag))
            .expect("flag");
        arg.get_default_values()[0].to_string_lossy().into_owned()
    }

    #[test]
    fn learning_rate_defaults_differ_per_objective() {
        let sft: f64 = default_of("sft", "lr").parse().unwrap();
        let spin: f64 = default_of("train", "lr").parse().unwrap();
        assert_eq!(sft, wgspin::train::SFT_LR);
        assert_eq!(spin, wgspin::train::TrainConfig::default().lr);
        assert_eq!(default_of("spin", "lr"), default_of("train", "lr"));
        assert!(sft > 10.0 * spin);
    }

    #[test]
    fn sft_has_no_pairwise_loss_flags() {
        let c = Cli::command();
        let sft = c.find_subcommand("sft").unwrap();
        for flag in ["loss", "beta"] {
            assert!(sft.get_arguments().all(|a| a.get_long() != Some(flag)));
        }
    }
}
