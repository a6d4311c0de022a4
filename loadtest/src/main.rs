//! `flood`: the ticketgate load harness (see the library docs for the layout).
//!
//! Simulates real clients and attackers against a ticketgate deployment on this
//! machine and prints figures that compare across machines: ratios against a baseline
//! WebSocket server measured in the same run.
//!
//! ```text
//! flood bench [--quick]                  everything: Redis, nodes, baseline, all scenarios, the bar
//! flood <scenario> --target URL ...      one scenario against a running deployment
//! flood baseline-server --listen ADDR    the baseline (bench starts it itself)
//! flood plain --target URL               connect + welcome + close against the baseline
//! ```
//!
//! Every run is bounded in count and time, sends traffic to loopback addresses only,
//! and stops by itself.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use ticketgate_loadtest::scenarios::{push_chaos, scale};
use ticketgate_loadtest::{baseline, bench, standalone};

/// The same allocator as the ticketgate binary, for both jobs of this one: the baseline
/// server (so the ratios compare servers, not allocators) and the harness (glibc malloc
/// was 15 % of its CPU, and it shares the machine with the server it measures).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "flood",
    version,
    about = "Load and attack harness for ticketgate, with a baseline to compare against"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start Redis, ticketgate nodes and the baseline, run the main scenarios against
    /// both, and print the figures, the ratios and the bar.
    Bench(bench::BenchArgs),
    /// Legit clients: login once, then mint + connect + welcome + close in a loop.
    Handshake(standalone::TargetArgs),
    /// Pre-minted tickets, connect only.
    Admit(standalone::TargetArgs),
    /// Random and re-MACed tickets at the upgrade.
    Forged(standalone::TargetArgs),
    /// Consumed tickets presented again.
    Replay(standalone::TargetArgs),
    /// One device flooding mint while honest devices mint at their normal rate.
    MintFlood(standalone::TargetArgs),
    /// N clients connecting at once.
    ConnStorm(standalone::TargetArgs),
    /// Hold N admitted sockets; with --server-pid, the server's RSS per socket.
    Idle(standalone::TargetArgs),
    /// Kick-to-close latency (sockets on --peer nodes when given).
    Kick(standalone::TargetArgs),
    /// Push fan-out latency and throughput (over the target and --peer nodes).
    Push(standalone::TargetArgs),
    /// Nothing lost across a reconnect: three nodes it starts on one Redis, pushes at a
    /// fixed rate, drains, restarts and cut sockets; every push id checked.
    PushChaos(push_chaos::ChaosArgs),
    /// About 100,000 admitted sockets over several nodes and harness processes it
    /// starts: memory per socket, a push to every user, a kick across nodes, a drain.
    Scale(scale::ScaleArgs),
    /// One harness process of `scale` (started by it; reads its plan on stdin).
    #[command(hide = true)]
    ScaleWorker,
    /// Business calls (send → reply) through a ticketgate node it starts, against the
    /// same upstream called directly, same concurrency, one run: ratio and added
    /// latency.
    Upstream(standalone::UpstreamArgs),
    /// Connect + welcome + close against a plain WebSocket server (the baseline), to
    /// measure or profile it the same way as ticketgate.
    Plain(standalone::PlainArgs),
    /// The baseline: a plain tokio-tungstenite echo server without authentication.
    BaselineServer(BaselineArgs),
}

#[derive(Args)]
struct BaselineArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9099")]
    listen: SocketAddr,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("flood: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::BaselineServer(args) => baseline::serve(args.listen).await,
            Command::Bench(args) => until_interrupted(bench::run(args)).await,
            Command::Plain(args) => until_interrupted(standalone::plain(args)).await,
            Command::Handshake(args) => until_interrupted(standalone::handshake(args)).await,
            Command::Admit(args) => until_interrupted(standalone::admit(args)).await,
            Command::Forged(args) => until_interrupted(standalone::forged(args)).await,
            Command::Replay(args) => until_interrupted(standalone::replay(args)).await,
            Command::MintFlood(args) => until_interrupted(standalone::mint_flood(args)).await,
            Command::ConnStorm(args) => until_interrupted(standalone::conn_storm(args)).await,
            Command::Idle(args) => until_interrupted(standalone::idle(args)).await,
            Command::Kick(args) => until_interrupted(standalone::kick(args)).await,
            Command::Push(args) => until_interrupted(standalone::push(args)).await,
            Command::PushChaos(args) => until_interrupted(push_chaos::run(args)).await,
            Command::Scale(args) => until_interrupted(scale::run(args)).await,
            Command::ScaleWorker => until_interrupted(scale::worker::run()).await,
            Command::Upstream(args) => until_interrupted(standalone::upstream(args)).await,
        }
    });
    // Reader tasks of held sockets must not keep the process alive.
    runtime.shutdown_timeout(Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("flood: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs `work` until it ends or Ctrl-C / SIGTERM arrives. On a signal `work` is
/// dropped, and with it every child process guard it holds.
async fn until_interrupted(
    work: impl std::future::Future<Output = anyhow::Result<()>>,
) -> anyhow::Result<()> {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        result = work => result,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted; child processes stopped")),
        _ = term => Err(anyhow::anyhow!("terminated; child processes stopped")),
    }
}
