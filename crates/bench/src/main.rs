use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use daytona_bench::{Options, Section};

/// Benchmarks a running daytona server through its public API, the way the SDK uses it.
/// Prints one table per section; `--json` also writes every raw sample.
#[derive(Parser, Debug)]
#[command(name = "daytona-bench", version)]
struct Args {
    /// API base URL, e.g. http://127.0.0.1:3000/api
    #[arg(long, env = "DAYTONA_API_URL")]
    api_url: String,
    /// API key (Bearer)
    #[arg(long, env = "DAYTONA_API_KEY", hide_env_values = true)]
    api_key: String,
    /// Sequential create-to-first-exec runs
    #[arg(long, default_value_t = 50)]
    runs: usize,
    /// Concurrent creates in the burst (0: no burst)
    #[arg(long, default_value_t = 20)]
    burst: usize,
    /// Idle sandboxes held at once in the idle section
    #[arg(long, default_value_t = 200)]
    idle: usize,
    /// Exec round trips on one running sandbox
    #[arg(long, default_value_t = 200)]
    exec_runs: usize,
    /// Size of the large transfer in MiB (the small one is 1 MiB)
    #[arg(long, default_value_t = 1024)]
    large_mib: u64,
    /// Requests per load run in the proxy section
    #[arg(long, default_value_t = 2000)]
    requests: usize,
    /// Concurrent connections in the proxy section
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Comma-separated sections to run: create, exec, transfer, proxy, idle, docker
    /// (default: all but docker)
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Also run the Docker comparison (needs a Docker engine with --docker-image loaded)
    #[arg(long)]
    docker: bool,
    /// Docker image for the comparison
    #[arg(long, default_value = "daytona-base:bench")]
    docker_image: String,
    /// PID of the server process (its RSS growth counts in the idle overhead)
    #[arg(long)]
    server_pid: Option<u32>,
    /// Directory for the transfer section's files
    #[arg(long, default_value_os_t = std::env::temp_dir())]
    scratch_dir: PathBuf,
    /// Write the report, raw samples included, to this file
    #[arg(long)]
    json: Option<PathBuf>,
}

impl Args {
    fn sections(&self) -> Result<Vec<Section>, daytona_bench::error::BenchError> {
        let mut sections: Vec<Section> = if self.only.is_empty() {
            Section::ALL
                .into_iter()
                .filter(|s| *s != Section::Docker)
                .collect()
        } else {
            self.only
                .iter()
                .map(|s| s.trim().parse())
                .collect::<Result<_, _>>()?
        };
        if self.docker && !sections.contains(&Section::Docker) {
            sections.push(Section::Docker);
        }
        Ok(sections)
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("DAYTONA_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let sections = match args.sections() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("daytona-bench: {e}");
            return ExitCode::from(2);
        }
    };
    let opts = Options {
        api_url: args.api_url.clone(),
        api_key: args.api_key.clone(),
        runs: args.runs,
        burst: args.burst,
        idle: args.idle,
        exec_runs: args.exec_runs,
        large_transfer_mib: args.large_mib,
        requests: args.requests,
        concurrency: args.concurrency,
        sections,
        server_pid: args.server_pid,
        scratch_dir: args.scratch_dir.clone(),
        docker_image: args.docker_image.clone(),
    };
    let outcome = daytona_bench::run(&opts, |result| match result {
        Ok(section) => print!("{}", section.table()),
        Err((section, e)) => println!("\n== {} FAILED: {e}", section.name()),
    })
    .await;
    let (report, failures) = match outcome {
        Ok(r) => r,
        Err(e) => {
            eprintln!("daytona-bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(path) = &args.json {
        let json = serde_json::to_string_pretty(&report).expect("report serializes");
        if let Err(e) = std::fs::write(path, json) {
            eprintln!("daytona-bench: write {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    }
    if failures > 0 {
        eprintln!("daytona-bench: {failures} section(s) failed");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
