//! A function given a secret that panics: the panic's message, which may quote the
//! plaintext, is printed nowhere. Its own binary, because it sets the panic hook.

mod common;

use cairn_sdk::secret::{Keyring, Secret};
use cairn_sdk::{Cx, Output, ProgramResult, Stack};
use common::*;
use std::sync::{Arc, Mutex};

#[tokio::test]
async fn a_function_given_a_secret_that_panics_prints_and_returns_no_plaintext() {
    // What the panic hook is asked to print, recorded (the hook Cairn wraps).
    let printed = Arc::new(Mutex::new(Vec::<String>::new()));
    let recorder = printed.clone();
    std::panic::set_hook(Box::new(move |info| {
        eprintln!("{info}");
        recorder.lock().unwrap().push(info.to_string());
    }));

    let key = Keyring::from_key(&[44; 64]).unwrap();
    let password = Secret::seal(&key, &"hunter33".to_owned());
    let stack = Stack::<()>::new("dev").provider(provider()).program(move |cx: &mut Cx, _: &()| -> ProgramResult {
        let q = cx.add(Queue::new("orders"));
        let leaked: Output<String> = q.arn().zip(&password).map(|(_, p)| panic!("the password is {p}"));
        cx.export("leaked", leaked);
        Ok(())
    });
    let mut session = stack.in_memory_session().await.unwrap();
    let report = session.up(&()).await.unwrap();
    assert!(!report.succeeded(), "an output not computed fails the up");
    let err = &report.output_errors["leaked"];
    assert!(err.contains("panicked") && !err.contains("hunter33"), "{err}");

    // A panic elsewhere still reaches the hook: the recorder is live.
    let _ = std::panic::catch_unwind(|| panic!("an ordinary panic"));
    let printed = printed.lock().unwrap().clone();
    assert!(printed.iter().any(|p| p.contains("an ordinary panic")), "{printed:?}");
    assert!(!printed.iter().any(|p| p.contains("hunter33")), "the plaintext was printed: {printed:?}");
}
