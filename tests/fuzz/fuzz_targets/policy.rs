//! The policy language, YAML to decisions: any text parses to documents or
//! to located errors, never a panic or a hang (alias bombs stop at the node
//! budget). What parses compiles or fails cleanly; the compiled version is
//! the same whatever the document order; `decide()` answers any request.
#![no_main]

use std::net::{IpAddr, Ipv4Addr};

use libfuzzer_sys::fuzz_target;
use palisade_policy::{
    compile, decide, parse_documents, DefaultPolicy, Defaults, Direction, HttpInfo, Peer, Request,
    SpiffeId,
};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(docs) = parse_documents("fuzz.yaml", text) else {
        return;
    };
    let defaults = Defaults::new(DefaultPolicy::AllAuthenticated);
    let mut reversed = docs.clone();
    reversed.reverse();
    let Ok((policy, _warnings)) = compile(docs, defaults) else {
        return;
    };
    let (again, _) = compile(reversed, defaults).expect("the same documents compile again");
    assert_eq!(
        policy.version(),
        again.version(),
        "the version depends on document order"
    );

    let ids: Vec<SpiffeId> = [
        "spiffe://cluster.local/ns/demo/sa/server",
        "spiffe://cluster.local/ns/demo/sa/client",
    ]
    .iter()
    .map(|s| SpiffeId::parse(s).unwrap())
    .collect();
    let address = Peer::Address(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)));
    let http = HttpInfo {
        method: "GET",
        path: "/admin/x",
        host: Some("admin.demo:8080"),
    };
    for direction in [Direction::Ingress, Direction::Egress] {
        for local in &ids {
            for peer in [Peer::Identity(&ids[0]), Peer::Identity(&ids[1]), address] {
                for port in [80, 8080] {
                    for http in [None, Some(http)] {
                        let req = Request {
                            direction,
                            local,
                            peer,
                            port,
                            http,
                        };
                        decide(&policy, &req);
                    }
                }
            }
        }
    }
});
