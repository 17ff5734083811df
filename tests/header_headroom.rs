//! Pingora's HTTP/1 parser leaves room in each parsed header for the fields a proxy adds
//! (Herald's patch: PATCHES.md, "header headroom"): the forwarding fields and request id on a
//! request, `Date` and `Connection` on an answer, go in without growing the header's maps.

use pingora_core::protocols::http::v1::client::HttpSession as UpstreamSession;
use pingora_core::protocols::http::v1::server::HttpSession as DownstreamSession;
use tokio::io::AsyncWriteExt;

/// What a proxy adds to a header at most, in the patch's measure.
const ADDED: usize = 8;

#[tokio::test]
async fn a_parsed_request_has_room_for_what_the_proxy_adds() {
    let (mut client, server) = tokio::io::duplex(4096);
    client
        .write_all(b"GET /a HTTP/1.1\r\nHost: a.example\r\nAccept: */*\r\n\r\n")
        .await
        .unwrap();
    let mut session = DownstreamSession::new(Box::new(server));
    session.read_request().await.unwrap().expect("a request");
    let headers = &session.req_header().headers;
    assert_eq!(headers.len(), 2);
    assert!(
        headers.capacity() >= headers.len() + ADDED,
        "room for {} fields",
        headers.capacity()
    );
}

#[tokio::test]
async fn a_parsed_answer_has_room_for_what_the_proxy_adds() {
    let (app, proxy) = tokio::io::duplex(4096);
    let mut session = UpstreamSession::new(Box::new(proxy));
    let mut app = app;
    app.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        .await
        .unwrap();
    let request = pingora::http::RequestHeader::build("GET", b"/", None).unwrap();
    session
        .write_request_header(Box::new(request))
        .await
        .unwrap();
    session.read_response().await.unwrap();
    let headers = &session.resp_header().expect("an answer").headers;
    assert_eq!(headers.len(), 1);
    assert!(
        headers.capacity() >= headers.len() + ADDED,
        "room for {} fields",
        headers.capacity()
    );
}
