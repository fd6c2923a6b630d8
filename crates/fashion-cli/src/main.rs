//! The `fashion` command: parses flags, runs one subcommand, prints the error chain.

mod bench;
mod catalogue;
mod classify;
mod eval;
mod export;
mod model;
mod serve;
mod train;

use clap::{Parser, Subcommand};

/// Tag photos of clothes: category, view and colours.
#[derive(Parser)]
#[command(name = "fashion", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Tell the category, view and colours of photos.
    Classify(classify::ClassifyArgs),
    /// Measure a model on labelled photos.
    Eval(eval::EvalArgs),
    /// Train a model on labelled photos.
    Train(train::TrainArgs),
    /// Measure photos per second, optionally against a reference pipeline.
    Bench(bench::BenchArgs),
    /// Serve the model over HTTP, with a web page to drop photos on.
    Serve(serve::ServeArgs),
    /// Write the model for other serving engines (ONNX file, Triton repository).
    Export(export::ExportArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Classify(args) => classify::run(args),
        Command::Eval(args) => eval::run(args),
        Command::Train(args) => train::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Export(args) => export::run(args),
        Command::Serve(args) => serve::run(args),
    };
    match result {
        Ok(code) => code,
        // The reader of standard output went away (`fashion classify shop/ | head`): stop
        // quietly, with the status of a process ended by SIGPIPE, as other command-line tools do.
        Err(e) if is_broken_pipe(&e) => std::process::ExitCode::from(141),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
