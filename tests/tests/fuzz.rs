//! Request decoding and validation never panic: every RPC of every service
//! gets random bytes, and SubmitApplication gets bit-flipped copies of a
//! valid request, over real gRPC as a caller the policy allows. Every call
//! must end in a proper status (never a dropped stream), and every service
//! must still answer afterwards. Bounded: a fixed number of cases from a
//! fixed seed, so CI time stays flat and a failure reproduces.
use colend::borrowers::{Plant, generate};
use colend_platform::auth::{Class, POLICY};
use colend_testkit::rpc::{self, Method, methods};
use colend_testkit::{Backend, TestServer, as_bank, as_partner, as_service};
use prost::Message;
use tonic::Code;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn bytes(&mut self, max: usize) -> Vec<u8> {
        let n = (self.next() % (max as u64 + 1)) as usize;
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// The code and message a call ends with.
async fn send(
    ch: &tonic::transport::Channel,
    m: &Method,
    body: Vec<u8>,
    class: Class,
    n: usize,
) -> (Code, String) {
    let partner = format!("fz-{}", n % 97);
    let req = match class {
        Class::Partner => as_partner(&partner, ()),
        Class::Bank => as_bank(()),
        Class::Internal => as_service(&partner, ()),
    };
    match rpc::call(ch, m, req.metadata().clone(), Some(body)).await {
        Ok(()) => (Code::Ok, String::new()),
        Err(s) => (s.code(), s.message().to_string()),
    }
}

fn proper(code: Code, message: &str) -> bool {
    // A panic or a dropped stream shows as UNKNOWN, or as INTERNAL from the
    // transport ("h2 protocol error", "stream closed"); a decode failure is a
    // proper INTERNAL status naming the decode.
    match code {
        Code::Unknown => false,
        Code::Internal => message.contains("decode") || message == "internal error",
        _ => true,
    }
}

#[tokio::test]
async fn decoding_and_validation_never_panic() {
    let s = TestServer::start(Backend::Embedded, colend::register_all).await;
    let mut rng = Rng(0x5eed_c01e_4d00_0001);
    let mut calls = 0usize;
    let mut codes = std::collections::BTreeMap::<String, usize>::new();
    for m in methods() {
        let class = POLICY
            .iter()
            .find(|(p, _)| *p == m.path)
            .and_then(|(_, c)| c.first().copied())
            .expect("every RPC has a policy");
        for _ in 0..30 {
            let body = rng.bytes(200);
            let (code, msg) = send(&s.channel, &m, body.clone(), class, calls).await;
            assert!(
                proper(code, &msg),
                "{} with {body:02x?}: {code:?} {msg}",
                m.path
            );
            *codes.entry(format!("{code:?}")).or_default() += 1;
            calls += 1;
        }
    }
    // A valid submission, bit-flipped: every field's validation is reached.
    let submit = Method {
        path: "colend.acquisition.v1.AcquisitionService/SubmitApplication".into(),
        client_streaming: false,
        server_streaming: false,
    };
    let b = generate(40, 9, colend_platform::time::today())
        .into_iter()
        .find(|b| b.plant == Plant::Good)
        .unwrap();
    let valid = colend::demo::application("fuzz".into(), "fuzz".into(), &b).encode_to_vec();
    for i in 0..400 {
        let mut body = valid.clone();
        for _ in 0..=(rng.next() % 4) {
            let at = (rng.next() as usize) % body.len();
            body[at] ^= 1 << (rng.next() % 8);
        }
        // A fresh request id per case, so each one is validated afresh.
        let mut msg = body.clone();
        msg.extend(
            colend_contracts::acquisition::v1::SubmitApplicationRequest {
                request_id: format!("fuzz-{i}"),
                ..Default::default()
            }
            .encode_to_vec(),
        );
        let (code, m) = send(&s.channel, &submit, msg, Class::Partner, i).await;
        assert!(
            proper(code, &m),
            "SubmitApplication with {body:02x?}: {code:?} {m}"
        );
        *codes.entry(format!("{code:?}")).or_default() += 1;
        calls += 1;
    }
    for svc in colend::SERVICE_NAMES {
        colend_testkit::assert_serving(s.channel.clone(), svc).await;
    }
    eprintln!("{calls} fuzzed calls, every one a proper status: {codes:?}");
    s.stop().await;
}
