//! The per-IP failure quota: failures over the budget get 429, valid calls go through.

use ticketgate::config::Rate;

use crate::answers::assert_error;
use crate::signed::{assert_minted, Signed};
use crate::support::TestServer;
use crate::upgrade::{assert_admitted, ticket_for, upgrade};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_over_the_ip_budget_get_429_but_valid_calls_go_through() {
    let server = TestServer::builder()
        .config(|c| c.rates.fail_ip = Rate::parse("5/min").expect("rate"))
        .start()
        .await;
    let (session, ticket) = ticket_for(&server).await;
    let forged = || {
        let mut signed = Signed::mint(&session);
        signed.key = vec![0; 32];
        signed.request()
    };
    for _ in 0..5 {
        assert_error(&forged().send(&server).await, 401, "bad_signature");
    }
    let answer = forged().send(&server).await;
    assert_error(&answer, 429, "rate_limited");
    let retry_after = answer
        .header("retry-after")
        .and_then(|v| v.parse::<u64>().ok());
    assert!(
        retry_after.is_some_and(|s| (1..=60).contains(&s)),
        "Retry-After: {retry_after:?}"
    );
    // A forged ticket from the same IP is a failure too.
    let mut fake = ticket.clone();
    fake.ticket = format!(
        "1.{}.9999999999999.x.{}",
        session.session_id,
        "A".repeat(22)
    );
    let answer = upgrade(&session, &fake).send_raw(&server).await;
    assert_error(&answer, 429, "rate_limited");
    assert!(answer.header("retry-after").is_some());

    // Valid calls are not failures: a correct mint and a real ticket still work.
    assert_minted(&Signed::mint(&session).request().send(&server).await);
    assert_admitted(&server, &upgrade(&session, &ticket), &session).await;
    // And failures are still refused.
    assert_error(&forged().send(&server).await, 429, "rate_limited");
}
