#[path = "bench/broadcast.rs"]
mod broadcast;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut options = broadcast::BroadcastOptions::default();
    let args: Vec<u64> = std::env::args().skip(1).map(|a| a.parse().expect("number")).collect();
    if args.len() == 3 {
        options = broadcast::BroadcastOptions { messages: args[0], statuses: args[1], backlog_statuses: args[2] };
    }
    println!("{}", broadcast::run(&options).await?);
    Ok(())
}
