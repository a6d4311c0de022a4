//! The `ticketgate` binary: config → runtime → server → wait for a signal → drain.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use ticketgate::config::{Config, LogFormat};
use ticketgate::{auth, Server};

/// mimalloc instead of the system allocator: under connection churn glibc malloc
/// fragments (and keeps argon2's 19 MiB blocks in its arenas after logins), while
/// mimalloc returns freed memory to the OS and is faster on small allocations.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit code for a configuration error (EX_CONFIG).
const EXIT_CONFIG: u8 = 78;
/// Exit code for a usage or data error (EX_DATAERR).
const EXIT_DATA: u8 = 65;
/// Exit code for a start failure (EX_UNAVAILABLE).
const EXIT_UNAVAILABLE: u8 = 69;

#[derive(Parser)]
#[command(
    name = "ticketgate",
    version,
    about = "WebSocket gateway admitted by one-time tickets"
)]
struct Cli {
    /// TOML config file; keys are the TICKETGATE_* variable names without the prefix, lower case.
    #[arg(long, global = true, env = "TICKETGATE_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (no Redis URL = the embedded store, one node).
    Serve,
    /// Manage the users file.
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Manage access-token signing keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
}

#[derive(Subcommand)]
enum UserCommand {
    /// Add or replace a user; the password is read from standard input.
    Add {
        /// User name: 1-64 characters of [A-Za-z0-9_.@-].
        name: String,
        /// Read the password from standard input (the only way: never on the command line).
        #[arg(long, required = true)]
        password_stdin: bool,
    },
    /// Block a user: no login, refresh or mint.
    Block {
        /// User name.
        name: String,
    },
    /// Unblock a user.
    Unblock {
        /// User name.
        name: String,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Add a new access-token signing key; older keys keep verifying.
    Rotate,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ticketgate: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    match cli.command {
        Command::Serve => serve(config),
        Command::User { command } => user(&config, command),
        Command::Keys {
            command: KeysCommand::Rotate,
        } => match auth::tokens::KeyRing::rotate(
            &config.data_dir,
            Some(config.key_reload * 2 + config.ttl.access + config.ttl.jwt_leeway),
        ) {
            Ok(kid) => {
                println!(
                    "new signing key {kid}: nodes verify it within {:?} and sign with it after {:?}",
                    config.key_reload,
                    config.key_reload * 2
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("ticketgate: {e}");
                ExitCode::from(EXIT_UNAVAILABLE)
            }
        },
    }
}

fn user(config: &Config, command: UserCommand) -> ExitCode {
    let path = &config.users_file;
    let result = match command {
        UserCommand::Add { name, .. } => {
            let mut password = String::new();
            if let Err(e) = std::io::stdin().read_to_string(&mut password) {
                eprintln!("ticketgate: cannot read the password from stdin: {e}");
                return ExitCode::from(EXIT_DATA);
            }
            let password = password.trim_end_matches(['\n', '\r']);
            if password.is_empty() {
                eprintln!("ticketgate: empty password");
                return ExitCode::from(EXIT_DATA);
            }
            auth::users::add_user(path, &name, password)
                .map(|()| format!("user {name} saved in {}", path.display()))
        }
        UserCommand::Block { name } => {
            auth::users::set_blocked(path, &name, true).map(|()| format!("user {name} blocked"))
        }
        UserCommand::Unblock { name } => {
            auth::users::set_blocked(path, &name, false).map(|()| format!("user {name} unblocked"))
        }
    };
    match result {
        Ok(msg) => {
            println!("{msg}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ticketgate: {e}");
            ExitCode::from(EXIT_DATA)
        }
    }
}

/// Dependencies whose logs stop at `warn` whatever `RUST_LOG` says: at debug and trace
/// they print request heads and URIs (a ticket rides in `?ticket=` or a subprotocol)
/// and whole frames (a `refresh` frame carries an access token).
const CAPPED_TARGETS: [&str; 10] = [
    "hyper",
    "hyper_util",
    "h2",
    "tungstenite",
    "tokio_tungstenite",
    "axum",
    "tower",
    "tower_http",
    "fred",
    "reqwest",
];

/// Logs to stdout through two filters, both of which must let an event through:
/// `RUST_LOG` (default `info`), and a fixed cap on [`CAPPED_TARGETS`]. The cap is a
/// filter of its own, not directives appended to `RUST_LOG`: a more specific directive
/// (`tungstenite::protocol=trace`) would win over an appended `tungstenite=warn`.
fn init_logging(format: LogFormat) {
    use tracing_subscriber::filter::{LevelFilter, Targets};
    use tracing_subscriber::prelude::*;
    use tracing_subscriber::EnvFilter;

    let wanted = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into());
    let wanted = EnvFilter::try_new(wanted).unwrap_or_else(|_| EnvFilter::new("info"));
    let cap = Targets::new()
        .with_default(LevelFilter::TRACE)
        .with_targets(CAPPED_TARGETS.map(|target| (target, LevelFilter::WARN)));
    // Colour codes only on a terminal: in a file or a log collector they are noise.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let output = match format {
        LogFormat::Json => tracing_subscriber::fmt::layer().json().boxed(),
        LogFormat::Text => tracing_subscriber::fmt::layer().with_ansi(ansi).boxed(),
    };
    tracing_subscriber::registry()
        .with(output)
        .with(wanted)
        .with(cap)
        .init();
}

fn serve(config: Config) -> ExitCode {
    init_logging(config.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ticketgate: cannot start the runtime: {e}");
            return ExitCode::from(EXIT_UNAVAILABLE);
        }
    };
    runtime.block_on(async move {
        tracing::info!(?config, "starting");
        let server = match Server::bind(config).await {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(cause = %e, "cannot start");
                eprintln!("ticketgate: {e}");
                let code = if e.is_misconfiguration() {
                    EXIT_CONFIG
                } else {
                    EXIT_UNAVAILABLE
                };
                return ExitCode::from(code);
            }
        };
        server.run(ticketgate::shutdown::os_signal()).await;
        ExitCode::SUCCESS
    })
}
