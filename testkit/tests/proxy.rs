//! The fault proxy against a tiny upstream of our own: no moto needed.
//!
//! The client is a plain `TcpStream` speaking HTTP/1.1, so a dropped connection shows as
//! it would to any client: the connection ends with no answer.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cairn_testkit::{Fault, FaultPlan, FaultProxy, Release};
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};

// ---------------------------------------------------------------------------------------
// The upstream: answers 200 to everything and remembers what it saw.

#[derive(Clone, Debug)]
struct Seen {
    method: String,
    path: String,
    host: String,
    body: String,
}

struct Upstream {
    port: u16,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Upstream {
    fn start() -> Upstream {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let recorder = Arc::clone(&seen);
        // Lives as long as the test binary, like the proxy's own thread would.
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                loop {
                    let (stream, _) = listener.accept().await.unwrap();
                    let recorder = Arc::clone(&recorder);
                    tokio::spawn(async move {
                        let service = hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
                            let recorder = Arc::clone(&recorder);
                            async move {
                                let (parts, body) = request.into_parts();
                                let body = body.collect().await?.to_bytes();
                                let seen = Seen {
                                    method: parts.method.to_string(),
                                    path: parts.uri.to_string(),
                                    host: parts
                                        .headers
                                        .get("host")
                                        .map(|h| h.to_str().unwrap().to_string())
                                        .unwrap_or_default(),
                                    body: String::from_utf8_lossy(&body).into_owned(),
                                };
                                let answer = format!("upstream saw {} {} {}", seen.method, seen.path, seen.body);
                                recorder.lock().unwrap().push(seen);
                                Ok::<_, hyper::Error>(Response::new(Full::new(Bytes::from(answer))))
                            }
                        });
                        let io = hyper_util::rt::TokioIo::new(stream);
                        let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
                    });
                }
            });
        });
        Upstream { port, seen }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

// ---------------------------------------------------------------------------------------
// The client: HTTP/1.1 over one keep-alive TcpStream.

#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

struct Conn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    host: String,
}

impl Conn {
    fn open(proxy: &FaultProxy) -> Conn {
        let stream = TcpStream::connect(("127.0.0.1", proxy.port())).unwrap();
        // Long enough never to trip on a slow machine; a timeout shows as TimedOut or
        // WouldBlock, which `assert_dropped` refuses.
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Conn {
            reader: BufReader::new(stream.try_clone().unwrap()),
            writer: stream,
            host: format!("127.0.0.1:{}", proxy.port()),
        }
    }

    fn send(&mut self, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> io::Result<Answer> {
        let mut request =
            format!("{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\n", self.host, body.len());
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        request.push_str(body);
        self.writer.write_all(request.as_bytes())?;

        // An `Expect: 100-continue` request first gets an interim 100 answer: skip it.
        let (status, headers) = loop {
            let (status, headers) = self.read_head()?;
            if status >= 200 {
                break (status, headers);
            }
        };
        let answer = Answer { status, headers, body: String::new() };
        let length: usize = answer.header("content-length").expect("answers with a Content-Length").parse().unwrap();
        let mut body = vec![0; length];
        self.reader.read_exact(&mut body)?;
        Ok(Answer { body: String::from_utf8(body).unwrap(), ..answer })
    }

    fn read_head(&mut self) -> io::Result<(u16, Vec<(String, String)>)> {
        let mut status_line = String::new();
        if self.reader.read_line(&mut status_line)? == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the connection closed with no answer"));
        }
        let status = status_line.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("an HTTP status line");
        let mut headers = Vec::new();
        loop {
            let mut line = String::new();
            self.reader.read_line(&mut line)?;
            let line = line.trim_end();
            if line.is_empty() {
                return Ok((status, headers));
            }
            let (name, value) = line.split_once(':').expect("a header line");
            headers.push((name.to_string(), value.trim().to_string()));
        }
    }

    /// An EC2 call (query protocol, form body).
    fn ec2(&mut self, action: &str) -> io::Result<Answer> {
        self.send("POST", "/", &[FORM], &format!("Action={action}&Version=2016-11-15"))
    }
}

const FORM: (&str, &str) = ("Content-Type", "application/x-www-form-urlencoded; charset=utf-8");

/// The call got no answer because the proxy closed the connection (not because the
/// client gave up waiting).
fn assert_dropped(result: io::Result<Answer>) {
    match result {
        Ok(answer) => panic!("expected the connection dropped, got an answer: {answer:?}"),
        Err(e) => assert!(
            matches!(e.kind(), io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset),
            "expected the connection dropped, got {e:?}"
        ),
    }
}

fn start() -> (Upstream, FaultProxy) {
    let upstream = Upstream::start();
    let proxy = FaultProxy::start(upstream.url());
    (upstream, proxy)
}

// ---------------------------------------------------------------------------------------

#[test]
fn passes_calls_through_on_one_kept_alive_connection() {
    let (upstream, proxy) = start();
    let mut conn = Conn::open(&proxy);

    let created = conn.ec2("CreateVpc").unwrap();
    assert_eq!(created.status, 200);
    assert_eq!(created.body, "upstream saw POST / Action=CreateVpc&Version=2016-11-15");
    let got = conn.send("GET", "/bucket/key?versionId=3", &[], "").unwrap();
    assert_eq!(got.body, "upstream saw GET /bucket/key?versionId=3 ");
    let put = conn.send("PUT", "/bucket/key", &[("Expect", "100-continue")], "the object").unwrap();
    assert_eq!(put.body, "upstream saw PUT /bucket/key the object");

    let seen = upstream.seen();
    assert_eq!(seen.len(), 3);
    // The client's Host goes through: signatures and the URLs moto builds from it hold.
    assert_eq!(seen[0].host, format!("127.0.0.1:{}", proxy.port()));
    let stats = proxy.stats();
    assert_eq!((stats.calls, stats.mutating_calls, stats.total_faults()), (3, 2, 0));

    proxy.reset_stats();
    assert_eq!(proxy.stats(), Default::default());
}

#[test]
fn lost_answer_takes_effect_but_the_client_gets_no_answer() {
    let (upstream, proxy) = start();
    proxy.set_plan(FaultPlan::always(Fault::LostAnswer));

    assert_dropped(Conn::open(&proxy).ec2("CreateVpc"));
    let seen = upstream.seen();
    assert_eq!(seen.len(), 1, "the upstream got the call: {seen:?}");
    assert!(seen[0].body.starts_with("Action=CreateVpc"));

    // Reads are never faulted: the client can see what happened.
    assert_eq!(Conn::open(&proxy).ec2("DescribeVpcs").unwrap().status, 200);
    let stats = proxy.stats();
    assert_eq!(stats.faults_of(Fault::LostAnswer), 1);
    assert_eq!(stats.faulted[0].action, "CreateVpc");
}

#[test]
fn reset_before_forward_never_reaches_the_upstream() {
    let (upstream, proxy) = start();
    proxy.set_plan(FaultPlan::always(Fault::ResetBeforeForward));

    assert_dropped(Conn::open(&proxy).ec2("DeleteVpc"));
    assert_dropped(Conn::open(&proxy).send("DELETE", "/bucket/key", &[], ""));
    assert!(upstream.seen().is_empty());
    assert_eq!(proxy.stats().faults_of(Fault::ResetBeforeForward), 2);
}

#[test]
fn status500_after_forward_takes_effect_and_answers_500() {
    let (upstream, proxy) = start();
    proxy.set_plan(FaultPlan::always(Fault::Status500AfterForward));

    let answer = Conn::open(&proxy).ec2("CreateVpc").unwrap();
    assert_eq!(answer.status, 500);
    assert!(answer.body.contains("<Code>InternalError</Code>"), "{}", answer.body);
    assert_eq!(upstream.seen().len(), 1);
}

#[test]
fn injected_errors_have_each_protocols_shape() {
    let (upstream, proxy) = start();
    let mut conn = Conn::open(&proxy);
    let sqs = |action: &'static str| [("X-Amz-Target", action), ("Content-Type", "application/x-amz-json-1.0")];

    proxy.set_plan(FaultPlan::always(Fault::Throttle));
    let ec2 = conn.ec2("CreateVpc").unwrap();
    assert_eq!(ec2.status, 503);
    assert!(ec2.header("content-type").unwrap().starts_with("text/xml"));
    assert!(ec2.body.contains("<Response><Errors><Error><Code>RequestLimitExceeded</Code><Message>"), "{}", ec2.body);
    assert!(ec2.body.contains("<RequestID>"));

    let autoscaling = conn
        .send("POST", "/", &[FORM], "Action=CreateAutoScalingGroup&Version=2011-01-01&AutoScalingGroupName=g")
        .unwrap();
    assert_eq!(autoscaling.status, 400);
    assert!(autoscaling
        .body
        .contains("<Error><Type>Sender</Type><Code>Throttling</Code><Message>Rate exceeded</Message></Error>"));
    assert!(autoscaling.body.starts_with("<ErrorResponse"));

    let queue = conn.send("POST", "/", &sqs("AmazonSQS.CreateQueue"), "{\"QueueName\":\"q\"}").unwrap();
    assert_eq!(queue.status, 400);
    assert_eq!(queue.header("content-type"), Some("application/x-amz-json-1.0"));
    assert_eq!(queue.header("x-amzn-query-error"), Some("ThrottlingException;Sender"));
    assert_eq!(queue.body, r#"{"__type":"com.amazonaws.sqs#ThrottlingException","message":"Rate exceeded"}"#);

    let object = conn.send("PUT", "/bucket/key", &[], "data").unwrap();
    assert_eq!(object.status, 503);
    assert!(object.body.contains("<Error><Code>SlowDown</Code>"));

    proxy.set_plan(FaultPlan::always(Fault::Status500));
    let ec2 = conn.ec2("CreateVpc").unwrap();
    assert_eq!(ec2.status, 500);
    assert!(ec2.body.contains("<Response><Errors><Error><Code>InternalError</Code>"));
    let autoscaling = conn.send("POST", "/", &[FORM], "Action=DeleteAutoScalingGroup&Version=2011-01-01").unwrap();
    assert_eq!(autoscaling.status, 500);
    assert!(autoscaling.body.contains("<Error><Type>Receiver</Type><Code>InternalFailure</Code>"));
    let queue = conn.send("POST", "/", &sqs("AmazonSQS.SendMessage"), "{}").unwrap();
    assert_eq!(queue.status, 500);
    assert!(queue.body.starts_with(r#"{"__type":"InternalFailure","#), "{}", queue.body);
    let object = conn.send("DELETE", "/bucket/key", &[], "").unwrap();
    assert_eq!(object.status, 500);
    assert!(object.body.contains("<Error><Code>InternalError</Code>"));

    // Reads go through even at rate 1.0.
    assert_eq!(conn.ec2("DescribeVpcs").unwrap().status, 200);
    assert_eq!(conn.send("POST", "/", &sqs("AmazonSQS.ReceiveMessage"), "{}").unwrap().status, 200);
    assert_eq!(conn.send("GET", "/bucket/key", &[], "").unwrap().status, 200);
    let seen: Vec<_> = upstream.seen().into_iter().map(|s| s.method).collect();
    assert_eq!(seen, ["POST", "POST", "GET"], "only the reads reached the upstream");
    let stats = proxy.stats();
    assert_eq!((stats.faults_of(Fault::Throttle), stats.faults_of(Fault::Status500)), (4, 4));
}

#[test]
fn a_seeded_plan_faults_the_same_calls_every_run() {
    let (_upstream, proxy) = start();
    let mut conn = Conn::open(&proxy);
    // The ordinals of the faulted calls among 40 mutating calls, from the answers and the
    // log; reads in between (`with_reads`) must not shift them.
    let mut run = |seed: u64, with_reads: bool| {
        proxy.set_plan(FaultPlan::random(seed, 0.3, vec![Fault::Status500, Fault::Throttle]));
        proxy.reset_stats();
        let mut answered_with_error = Vec::new();
        for ordinal in 0..40u64 {
            if with_reads {
                assert_eq!(conn.ec2("DescribeSubnets").unwrap().status, 200);
            }
            if conn.ec2("CreateSubnet").unwrap().status != 200 {
                answered_with_error.push(ordinal);
            }
        }
        let logged: Vec<u64> = proxy.stats().faulted.iter().map(|call| call.ordinal).collect();
        assert_eq!(logged, answered_with_error);
        logged
    };

    let first = run(42, false);
    assert!((4..=20).contains(&first.len()), "about 30% of 40 calls faulted: {first:?}");
    assert_eq!(run(42, true), first);
    assert_ne!(run(43, false), first, "another seed, other faults");
}

#[test]
fn answers_given_instead_go_once_each_in_order_to_their_operation() {
    let (upstream, proxy) = start();
    let mut conn = Conn::open(&proxy);
    proxy.set_plan(FaultPlan::always(Fault::Status500));
    proxy.answer_instead("RevokeSecurityGroupEgress", "<first/>");
    proxy.answer_instead("RevokeSecurityGroupEgress", "<second/>");
    proxy.answer_instead("DescribeVpcs", "<vpcs/>");

    // Matched by operation, first set first; a mutating call answered so is not faulted.
    let read = conn.ec2("DescribeVpcs").unwrap();
    assert_eq!((read.status, read.body.as_str(), read.header("content-type")), (200, "<vpcs/>", Some("text/xml")));
    assert_eq!(conn.ec2("RevokeSecurityGroupEgress").unwrap().body, "<first/>");
    assert_eq!(conn.ec2("RevokeSecurityGroupEgress").unwrap().body, "<second/>");
    // None left: the plan's fault, its ordinal the first.
    assert_eq!(conn.ec2("RevokeSecurityGroupEgress").unwrap().status, 500);
    assert!(upstream.seen().is_empty(), "the upstream never saw a call");

    let stats = proxy.stats();
    assert_eq!((stats.calls, stats.mutating_calls), (4, 3));
    assert_eq!(stats.answered_instead.values().sum::<u64>(), 3);
    assert_eq!(stats.faulted.iter().map(|f| f.ordinal).collect::<Vec<_>>(), [0]);
    // A JSON call is answered in its request's content type; unused answers are dropped.
    proxy.set_plan(FaultPlan::none());
    proxy.answer_instead("GetQueueUrl", r#"{"QueueUrl":"q"}"#);
    let json = [("X-Amz-Target", "AmazonSQS.GetQueueUrl"), ("Content-Type", "application/x-amz-json-1.0")];
    let answer = conn.send("POST", "/", &json, "{}").unwrap();
    assert_eq!((answer.body.as_str(), answer.header("content-type")), (r#"{"QueueUrl":"q"}"#, Some("application/x-amz-json-1.0")));
    // An error answer, with its status.
    proxy.answer_instead_with_status("CreateVpc", 400, "<Response><Errors/></Response>");
    let refused = conn.ec2("CreateVpc").unwrap();
    assert_eq!((refused.status, refused.body.as_str()), (400, "<Response><Errors/></Response>"));
    proxy.answer_instead("DeleteVpc", "<never/>");
    assert_eq!(proxy.clear_answers(), 1);
    assert_eq!(conn.ec2("DeleteVpc").unwrap().body, "upstream saw POST / Action=DeleteVpc&Version=2016-11-15");
}

#[test]
fn a_fault_set_for_an_operation_hits_its_next_call_once_in_the_plans_place() {
    let (upstream, proxy) = start();
    proxy.fault_next("CreateVpc", Fault::LostAnswer);
    proxy.fault_next("DescribeVpcs", Fault::Throttle);

    let mut conn = Conn::open(&proxy);
    assert_eq!(conn.ec2("DeleteVpc").unwrap().status, 200, "another operation goes through");
    assert_eq!(conn.ec2("DescribeVpcs").unwrap().status, 503, "a read can be faulted so too");
    assert_eq!(conn.ec2("DescribeVpcs").unwrap().status, 200, "once");
    // Forwarded, and its answer lost.
    assert_dropped(Conn::open(&proxy).ec2("CreateVpc"));
    assert_eq!(Conn::open(&proxy).ec2("CreateVpc").unwrap().status, 200);

    let seen: Vec<String> = upstream.seen().into_iter().map(|s| s.body).collect();
    let form = |action: &str| format!("Action={action}&Version=2016-11-15");
    assert_eq!(seen, [form("DeleteVpc"), form("DescribeVpcs"), form("CreateVpc"), form("CreateVpc")]);
    let stats = proxy.stats();
    let faulted: Vec<(u64, &str, Fault)> = stats.faulted.iter().map(|f| (f.ordinal, f.action.as_str(), f.fault)).collect();
    // The write keeps its ordinal among the writes; the read is logged with the next one.
    assert_eq!(faulted, [(1, "DescribeVpcs", Fault::Throttle), (1, "CreateVpc", Fault::LostAnswer)]);
    assert_eq!((stats.calls, stats.mutating_calls), (5, 3));

    // Set and not given: dropped with the answers.
    proxy.fault_next("DeleteVpc", Fault::Status500);
    assert_eq!(proxy.clear_answers(), 1);
    assert_eq!(conn.ec2("DeleteVpc").unwrap().status, 200);

    // In the plan's place: the plan's own fault is not drawn for that call, and the call
    // does not count towards a hold.
    proxy.set_plan(FaultPlan::always(Fault::Throttle));
    proxy.reset_stats();
    proxy.fault_next("CreateVpc", Fault::Status500);
    let mut holder = proxy.hold_nth_mutating(1);
    assert_eq!(conn.ec2("CreateVpc").unwrap().status, 500, "faulted as set, not throttled nor held");
    assert_eq!(holder.wait(Duration::from_millis(20)), None, "not held");
    let mut other = Conn::open(&proxy);
    let held = std::thread::spawn(move || other.ec2("DeleteVpc"));
    assert_eq!(holder.wait(Duration::from_secs(10)).as_deref(), Some("DeleteVpc"), "the next write is held");
    assert_eq!(holder.release(Release::Drop), None);
    assert_dropped(held.join().unwrap());
    let stats = proxy.stats();
    assert_eq!((stats.faults_of(Fault::Status500), stats.faults_of(Fault::Throttle)), (1, 0));
    proxy.set_plan(FaultPlan::none());
}

#[test]
fn a_held_call_is_forwarded_on_release_and_its_client_gets_no_answer() {
    let (upstream, proxy) = start();
    let mut holder = proxy.hold_nth_mutating(2);
    assert_eq!(holder.wait(Duration::from_millis(20)), None, "nothing to hold yet");

    let mut conn = Conn::open(&proxy);
    let client = std::thread::spawn(move || {
        assert_eq!(conn.ec2("DescribeVpcs").unwrap().status, 200, "reads are not counted");
        assert_eq!(conn.ec2("CreateVpc").unwrap().status, 200, "the first mutating call passes");
        conn.ec2("CreateSubnet")
    });

    assert_eq!(holder.wait(Duration::from_secs(10)).as_deref(), Some("CreateSubnet"));
    assert_eq!(upstream.seen().len(), 2, "the held call is not forwarded yet");
    assert_eq!(holder.release(Release::Forward), Some(200));
    let seen = upstream.seen();
    assert_eq!(seen.len(), 3);
    assert!(seen[2].body.starts_with("Action=CreateSubnet"));
    assert_dropped(client.join().unwrap());
}

#[test]
fn a_held_call_dropped_on_release_never_reaches_the_upstream() {
    let (upstream, proxy) = start();
    let mut holder = proxy.hold_nth_mutating(1);
    let client = std::thread::spawn({
        let mut conn = Conn::open(&proxy);
        move || conn.ec2("TerminateInstances")
    });
    assert_eq!(holder.wait(Duration::from_secs(10)).as_deref(), Some("TerminateInstances"));
    assert_eq!(holder.release(Release::Drop), None);
    assert_dropped(client.join().unwrap());
    assert!(upstream.seen().is_empty());

    // The hold is spent: the next mutating call goes through.
    assert_eq!(Conn::open(&proxy).ec2("TerminateInstances").unwrap().status, 200);
}

#[test]
fn a_hold_dropped_before_its_call_arrives_is_cancelled() {
    let (upstream, proxy) = start();
    drop(proxy.hold_nth_mutating(1));
    assert_eq!(Conn::open(&proxy).ec2("CreateVpc").unwrap().status, 200);

    let holder = proxy.hold_nth_mutating(1);
    assert_eq!(holder.release(Release::Forward), None, "released before any call: nothing held");
    assert_eq!(Conn::open(&proxy).ec2("CreateVpc").unwrap().status, 200);
    assert_eq!(upstream.seen().len(), 2);
}

#[test]
fn latency_delays_every_call() {
    let (_upstream, proxy) = start();
    proxy.set_plan(FaultPlan::none().with_latency(Duration::from_millis(50)));
    let mut conn = Conn::open(&proxy);
    let began = Instant::now();
    assert_eq!(conn.ec2("DescribeVpcs").unwrap().status, 200);
    assert!(began.elapsed() >= Duration::from_millis(50));
}

#[test]
fn a_dropped_proxy_stops_listening() {
    let (_upstream, proxy) = start();
    let port = proxy.port();
    assert_eq!(proxy.endpoint(), format!("http://127.0.0.1:{port}"));
    drop(proxy);
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
}
