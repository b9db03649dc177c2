mod support;

use support::*;

#[tokio::test]
async fn forwards_an_authenticated_request() {
    let up = Upstream::start().await;
    let kg = Keygate::start(&basic_config(up.addr, "k1", "")).await;
    let r = get(&kg.url("/hello?x=1"), &[("x-api-key", "k1")]).await;
    assert_eq!(r.status, 200);
    let seen = up.last();
    assert_eq!(seen.uri, "/hello?x=1");
    assert!(seen.headers.get("x-api-key").is_none());
    assert_eq!(seen.headers.get("x-client-id").unwrap(), "billing");
    kg.stop().await;
}
