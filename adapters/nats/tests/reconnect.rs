//! 100 concurrent publishers while the server is restarted twice, with
//! publishes confirmed before and after each restart: every message whose
//! publish returned `Ok` is received
//! (`courier_testkit::fixtures::restarts_under_load`).

use courier_nats::NatsBroker;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_under_load_lose_no_confirmed_message() {
    let server = courier_testkit::fixtures::fresh_nats()
        .await
        .expect("own nats container");
    let broker = NatsBroker::connect(server.url()).await.expect("connect");
    courier_testkit::fixtures::restarts_under_load("nats", broker.into_broker(), &server).await;
}
