//! The `tend` binary: parses the command line and hands each command to its module.

mod progress;
mod spec_cmd;
mod workflow_cmd;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// tend keeps stateful services deployed, repaired and maintained.
#[derive(Parser)]
#[command(name = "tend", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check and show service specs.
    #[command(subcommand)]
    Spec(SpecCmd),
    /// Run standalone resumable workflows.
    #[command(subcommand)]
    Workflow(WorkflowCmd),
}

#[derive(Subcommand)]
enum SpecCmd {
    /// Validate a service spec: exit 0 if valid, else print every error with its location.
    Validate {
        file: PathBuf,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print a service spec normalised, with every default filled in.
    Show {
        file: PathBuf,
        /// JSON instead of YAML.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum WorkflowCmd {
    /// Run a workflow: steps already done are checked and skipped, interrupted ones resume.
    Run {
        file: PathBuf,
        /// Run the last N steps (in dependency order) again, even if their checks pass.
        #[arg(long, value_name = "N", default_value_t = 0)]
        replay: usize,
        /// Emit one JSON event per line instead of a progress display.
        #[arg(long)]
        json: bool,
        /// Where the workflow's progress is kept (default: .tend beside the file).
        #[arg(long, value_name = "DIR")]
        state_dir: Option<PathBuf>,
    },
    /// Show the persisted progress of a workflow.
    Status {
        file: PathBuf,
        #[arg(long)]
        json: bool,
        #[arg(long, value_name = "DIR")]
        state_dir: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TEND_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Spec(SpecCmd::Validate { file, json }) => spec_cmd::validate(&file, json),
        Command::Spec(SpecCmd::Show { file, json }) => spec_cmd::show(&file, json),
        Command::Workflow(cmd) => {
            let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("error: cannot start the runtime: {e}");
                    return ExitCode::from(2);
                }
            };
            rt.block_on(async move {
                match cmd {
                    WorkflowCmd::Run { file, replay, json, state_dir } => {
                        workflow_cmd::run(&file, replay, json, state_dir.as_deref()).await
                    }
                    WorkflowCmd::Status { file, json, state_dir } => {
                        workflow_cmd::status(&file, json, state_dir.as_deref()).await
                    }
                }
            })
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
