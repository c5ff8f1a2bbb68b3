//! The `tend` binary: parses the command line and hands each command to its module.

#[macro_use]
mod out;

mod client;
mod cluster_cmd;
mod follow;
mod progress;
mod service_cmd;
mod spec_cmd;
mod token_cmd;
mod workflow_cmd;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// mimalloc: the control plane allocates small objects by the million; with glibc's allocator a
/// third of a large deploy's time went to allocating, and a desired-state answer could wait on
/// its consolidation (BENCHMARKS.md).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// tend keeps stateful services deployed, repaired and maintained.
#[derive(Parser)]
#[command(name = "tend", version, about, propagate_version = true)]
struct Cli {
    #[command(flatten)]
    conn: client::Conn,
    /// Print JSON instead of tables (client commands).
    #[arg(long, global = true)]
    json: bool,
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
    /// Run a control-plane member: on the embedded store (one member), or on etcd with several
    /// members electing a leader.
    Server(Box<cluster_cmd::ServerArgs>),
    /// The control plane: its members, the leader and its epoch, the store and its health.
    Status,
    /// Control plane, three local agents and an embedded store in one process, deploying SPEC.
    Dev {
        spec: PathBuf,
        #[arg(long, default_value = ".tend")]
        data_dir: PathBuf,
        /// Where the API listens (loopback only; port 0 picks a free one).
        #[arg(long = "listen", default_value = "127.0.0.1:0")]
        listen: SocketAddr,
        #[arg(long, default_value_t = 3)]
        agents: usize,
        /// Take command of agents (in DIR/agents) that obeyed another cluster, e.g. after
        /// DIR/server.redb was lost: they stop what this control plane does not know.
        #[arg(long)]
        adopt_agents: bool,
    },
    /// Run an agent, or list agents.
    #[command(subcommand)]
    Agent(AgentCmd),
    /// Deploy and inspect services.
    #[command(subcommand)]
    Service(ServiceCmd),
    /// Show and steer plans.
    #[command(subcommand)]
    Plan(PlanCmd),
    /// Pod instances.
    #[command(subcommand)]
    Pod(PodCmd),
    /// Tasks.
    #[command(subcommand)]
    Task(TaskCmd),
    /// Maintenance jobs: status, history, on-demand runs, time windows.
    #[command(subcommand)]
    Job(JobCmd),
    /// Volumes: in use, retained (with their deadline) and being deleted.
    #[command(subcommand)]
    Volume(VolumeCmd),
    /// Deterministic simulation of the control plane: seeds, faults, invariants (no cluster
    /// needed; the same as the `tend-sim` binary).
    Sim(tend_sim::cli::Args),
    /// Named API tokens with roles: create, list, revoke.
    #[command(subcommand)]
    Token(token_cmd::TokenCmd),
    /// What happened, in order.
    Events {
        #[arg(long)]
        service: Option<String>,
        /// Keep printing events as they happen (resumes across restarts and failovers).
        #[arg(long, short = 'f')]
        follow: bool,
    },
}

#[derive(Subcommand)]
enum VolumeCmd {
    /// Every volume set: owner, agent, size, state, since, retained until.
    List,
    /// Delete a volume set no instance uses (retained ones); refused while in use.
    Delete { id: String },
}

#[derive(Subcommand)]
enum AgentCmd {
    /// Run an agent that joins a control plane.
    Run(Box<cluster_cmd::AgentArgs>),
    /// List agents.
    List,
    /// Join tokens: `tend agent token create --ttl-seconds 3600` prints one (single use).
    #[command(subcommand)]
    Token(JoinTokenCmd),
    /// Revoke every certificate issued to an agent: it is refused from now on (a new join
    /// token lets it back with a new certificate).
    Revoke { id: String },
}

#[derive(Subcommand)]
enum JoinTokenCmd {
    /// A single-use token an agent joins with (`tend agent run --join-token …`).
    Create {
        #[arg(long, default_value_t = 3600)]
        ttl_seconds: u64,
    },
}

#[derive(Subcommand)]
enum ServiceCmd {
    /// Create or update a service from its spec and follow that generation's rollout
    /// (exit 0 once deployed; 1 if it failed, was rolled back or was replaced).
    Deploy {
        file: PathBuf,
        /// Return once submitted, without following the rollout.
        #[arg(long)]
        no_wait: bool,
        /// Accept shrinking or removing a deployed pod's volumes (refused otherwise). Nothing
        /// is deleted even then: the data stays in each instance's volume set.
        #[arg(long)]
        allow_data_loss: bool,
    },
    /// Dry run: what deploying FILE would do to each instance, and to its data. Changes
    /// nothing. Exit 0: nothing would change; 2: something would; 1: it would be refused.
    Plan {
        file: PathBuf,
        /// Preview as `service deploy --allow-data-loss` would submit it.
        #[arg(long)]
        allow_data_loss: bool,
    },
    List,
    Status {
        name: Option<String>,
    },
    /// Address and named ports of every running task.
    Endpoints {
        name: Option<String>,
    },
    /// Delete a service; --force while its tasks run.
    Delete {
        name: String,
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand)]
enum PlanCmd {
    Show {
        plan: Option<String>,
        #[arg(long)]
        service: Option<String>,
    },
    Interrupt(PlanTarget),
    Continue(PlanTarget),
    ForceComplete(PlanTarget),
    Restart(PlanTarget),
}

#[derive(clap::Args)]
struct PlanTarget {
    #[arg(default_value = "deploy")]
    plan: String,
    #[arg(long)]
    phase: Option<String>,
    #[arg(long)]
    step: Option<String>,
    #[arg(long)]
    service: Option<String>,
}

#[derive(Subcommand)]
enum PodCmd {
    List {
        #[arg(long)]
        service: Option<String>,
    },
    Status {
        instance: String,
        #[arg(long)]
        service: Option<String>,
    },
    Info {
        instance: String,
        #[arg(long)]
        service: Option<String>,
    },
    /// Restart in place: next incarnation on the same agent, same volumes.
    Restart {
        instance: String,
        #[arg(long)]
        service: Option<String>,
    },
    /// Replace for good: placed anew (elsewhere when possible) with fresh volumes.
    Replace {
        instance: String,
        #[arg(long)]
        service: Option<String>,
    },
}

#[derive(Subcommand)]
enum JobCmd {
    /// Every job-instance: status (COMPLETED, ON_TIME, LATE, OVERDUE, BLOCKED + why), alarm.
    List {
        #[arg(long)]
        service: Option<String>,
    },
    /// The job-instances of one job.
    Status {
        job: String,
        #[arg(long)]
        service: Option<String>,
    },
    /// Runs of a job.
    History {
        job: String,
        #[arg(long)]
        service: Option<String>,
    },
    /// Queue an on-demand run (highest priority), for one instance or all.
    Run {
        job: String,
        #[arg(long = "pod")]
        instance: Option<String>,
        #[arg(long)]
        service: Option<String>,
    },
    /// Time windows in which jobs must not start.
    #[command(subcommand)]
    Window(WindowCmd),
}

#[derive(Subcommand)]
enum WindowCmd {
    /// Add a window, e.g. --start 22:00 --end 06:00 --timezone +02:00 [--job repair] [--pod data].
    Add {
        #[arg(long)]
        start: String,
        #[arg(long)]
        end: String,
        #[arg(long, default_value = "UTC")]
        timezone: String,
        #[arg(long)]
        job: Option<String>,
        #[arg(long = "pod")]
        pods: Vec<String>,
        #[arg(long)]
        id: Option<String>,
    },
    List,
    Remove {
        id: String,
    },
}

#[derive(Subcommand)]
enum TaskCmd {
    /// The tail of a task's output.
    Logs {
        instance: String,
        task: String,
        #[arg(long)]
        service: Option<String>,
        #[arg(long)]
        stderr: bool,
        #[arg(long, default_value_t = 65536)]
        tail_bytes: u64,
        /// Keep printing what the task writes (Server-Sent Events), until interrupted.
        #[arg(long, short = 'f')]
        follow: bool,
    },
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

async fn cluster(cmd: Command, conn: client::Conn, json: bool) -> anyhow::Result<ExitCode> {
    use service_cmd as sc;
    match cmd {
        Command::Server(args) => cluster_cmd::server(*args).await,
        Command::Volume(cmd) => {
            let c = client::Client::new(&conn)?;
            match cmd {
                VolumeCmd::List => sc::volume_list(&c, json).await,
                VolumeCmd::Delete { id } => sc::volume_delete(&c, &id, json).await,
            }
        }
        Command::Status => cluster_cmd::status(&client::Client::new(&conn)?, json).await,
        Command::Dev { spec, data_dir, listen, agents, adopt_agents } => {
            cluster_cmd::dev(&spec, data_dir, listen, agents, adopt_agents).await
        }
        Command::Agent(AgentCmd::Run(a)) => cluster_cmd::agent(*a).await,
        Command::Agent(AgentCmd::List) => sc::agent_list(&client::Client::new(&conn)?, json).await,
        Command::Agent(AgentCmd::Token(JoinTokenCmd::Create { ttl_seconds })) => {
            let t = cluster_cmd::join_token(&client::Client::new(&conn)?, ttl_seconds).await?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&t)?);
            } else {
                eprintln!("join token for one agent, valid {ttl_seconds} s (tend agent run --join-token …):");
                outln!("{}", t.token);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Agent(AgentCmd::Revoke { id }) => {
            let c = client::Client::new(&conn)?;
            let v: serde_json::Value =
                c.post(&format!("/v1/agents/{id}/revoke"), &serde_json::json!({})).await?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                outln!(
                    "agent {id}: {} certificate(s) revoked",
                    v["revoked"].as_array().map_or(0, |a| a.len())
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Service(cmd) => {
            let c = client::Client::new(&conn)?;
            match cmd {
                ServiceCmd::Deploy { file, no_wait, allow_data_loss } => {
                    let args = sc::DeployArgs { file: &file, wait: !no_wait, allow_data_loss };
                    sc::deploy(&c, args, json).await
                }
                ServiceCmd::Plan { file, allow_data_loss } => {
                    sc::preview(&c, &file, allow_data_loss, json).await
                }
                ServiceCmd::List => sc::list(&c, json).await,
                ServiceCmd::Status { name } => sc::status(&c, name, json).await,
                ServiceCmd::Endpoints { name } => sc::endpoints(&c, name, json).await,
                ServiceCmd::Delete { name, force } => sc::delete(&c, &name, force, json).await,
            }
        }
        Command::Plan(cmd) => {
            let c = client::Client::new(&conn)?;
            let act = |a: &str, t: PlanTarget| (a.to_string(), t);
            let (action, t) = match cmd {
                PlanCmd::Show { plan, service } => return sc::plan_show(&c, service, plan, json).await,
                PlanCmd::Interrupt(t) => act("interrupt", t),
                PlanCmd::Continue(t) => act("continue", t),
                PlanCmd::ForceComplete(t) => act("force-complete", t),
                PlanCmd::Restart(t) => act("restart", t),
            };
            sc::plan_action(&c, t.service, &action, &t.plan, t.phase, t.step, json).await
        }
        Command::Pod(cmd) => {
            let c = client::Client::new(&conn)?;
            match cmd {
                PodCmd::List { service } => sc::pod_list(&c, service, json).await,
                PodCmd::Status { instance, service } => {
                    sc::pod_status(&c, service, &instance, false, json).await
                }
                PodCmd::Info { instance, service } => {
                    sc::pod_status(&c, service, &instance, true, json).await
                }
                PodCmd::Restart { instance, service } => {
                    sc::pod_action(&c, service, &instance, "restart", json).await
                }
                PodCmd::Replace { instance, service } => {
                    sc::pod_action(&c, service, &instance, "replace", json).await
                }
            }
        }
        Command::Task(TaskCmd::Logs { instance, task, service, stderr, tail_bytes, follow: true }) => {
            let c = client::Client::new(&conn)?;
            crate::follow::logs(&c, service, &instance, &task, stderr, tail_bytes, json).await
        }
        Command::Task(TaskCmd::Logs { instance, task, service, stderr, tail_bytes, follow: false }) => {
            sc::task_logs(&client::Client::new(&conn)?, service, &instance, &task, stderr, tail_bytes, json)
                .await
        }
        Command::Job(cmd) => {
            let c = client::Client::new(&conn)?;
            match cmd {
                JobCmd::List { service } => sc::job_list(&c, service, None, json).await,
                JobCmd::Status { job, service } => sc::job_list(&c, service, Some(job), json).await,
                JobCmd::History { job, service } => sc::job_history(&c, service, &job, json).await,
                JobCmd::Run { job, instance, service } => {
                    sc::job_run(&c, service, &job, instance, json).await
                }
                JobCmd::Window(WindowCmd::Add { start, end, timezone, job, pods, id }) => {
                    let body = serde_json::json!({ "start": start, "end": end, "timezone": timezone, "job": job, "pods": pods, "id": id });
                    sc::window_add(&c, body, json).await
                }
                JobCmd::Window(WindowCmd::List) => sc::window_list(&c, json).await,
                JobCmd::Window(WindowCmd::Remove { id }) => sc::window_remove(&c, &id, json).await,
            }
        }
        Command::Token(cmd) => token_cmd::run(&client::Client::new(&conn)?, cmd, json).await,
        Command::Events { service, follow: false } => {
            sc::events(&client::Client::new(&conn)?, service, json).await
        }
        Command::Events { service, follow: true } => {
            follow::events(&client::Client::new(&conn)?, service, 0, json).await
        }
        Command::Spec(_) | Command::Workflow(_) | Command::Sim(_) => {
            Err(anyhow::anyhow!("internal: command dispatched twice"))
        }
    }
}

fn main() -> ExitCode {
    tend_tls::install_default_provider();
    let cli = Cli::parse();
    // Commands that open no socket end quietly when the reader of their output goes away
    // (`tend spec show … | head`), by SIGPIPE like other Unix tools. Every other command keeps
    // SIGPIPE ignored: a control plane that hangs up on a socket mid-write must give an error
    // (or a restart the CLI follows through), not kill the command without a word. Their output
    // goes through `out`, which ends them as quietly on a broken pipe.
    if matches!(cli.command, Command::Spec(_) | Command::Sim(_)) {
        // SAFETY: setting a signal's disposition to the default before any thread starts.
        unsafe {
            let _ = nix::sys::signal::signal(
                nix::sys::signal::Signal::SIGPIPE,
                nix::sys::signal::SigHandler::SigDfl,
            );
        }
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TEND_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        // Colour codes only on a terminal: logs kept in files stay readable.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let (conn, json) = (cli.conn, cli.json);
    let result = match cli.command {
        Command::Spec(SpecCmd::Validate { file, json: j }) => spec_cmd::validate(&file, j || json),
        Command::Spec(SpecCmd::Show { file, json: j }) => spec_cmd::show(&file, j || json),
        Command::Sim(mut args) => {
            args.json |= json;
            return tend_sim::cli::main(args);
        }
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
                    WorkflowCmd::Run { file, replay, json: j, state_dir } => {
                        workflow_cmd::run(&file, replay, j || json, state_dir.as_deref()).await
                    }
                    WorkflowCmd::Status { file, json: j, state_dir } => {
                        workflow_cmd::status(&file, j || json, state_dir.as_deref()).await
                    }
                }
            })
        }
        other => match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
            Ok(rt) => rt.block_on(cluster(other, conn, json)),
            Err(e) => Err(anyhow::anyhow!("cannot start the runtime: {e}")),
        },
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
