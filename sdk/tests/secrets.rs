//! Secrets: sealed everywhere the engine keeps or shows them, opened only for the
//! provider's call.

mod common;

use cairn_sdk::secret::{self, Keyring, Secret};
use cairn_state::Store;
use cairn_sdk::{interpolate, Cx, Error, ProgramResult, RenderOptions, Stack, StackState, ValidationError};
use common::*;
use serde_json::{json, Value};

/// The orders queue of the common shop: its `auth_token` is secret in the schema.
fn orders(state: &StackState) -> &cairn_sdk::ResourceState {
    state.resources.iter().find(|r| r.urn.name() == "orders").unwrap()
}

#[tokio::test]
async fn a_secret_input_is_sealed_in_state_and_plans_and_the_provider_gets_the_plaintext() {
    // The common provider's outputs, and the token echoed under its own name and another.
    let fake = provider().with_outputs(|urn, inputs| {
        let mut p = cairn_sdk::Props::new();
        p.insert("arn", Value::from(format!("arn:test:{}", urn.name())));
        p.insert("version", Value::from(1));
        if let Some(token) = inputs.get("auth_token") {
            p.insert("auth_token", token.clone());
            p.insert("token_copy", token.clone());
        }
        p
    });
    let stack = shop_stack(&fake);
    let store = std::sync::Arc::new(cairn_state::MemoryStore::new());
    let mut session = stack.lock(store.clone(), "test").await.unwrap();
    let plan = session.preview(&Shop::new()).unwrap();
    let saved = serde_json::to_string(&plan).unwrap();
    let report = session.apply(&plan).await.unwrap();
    assert!(report.succeeded());
    session.close().await.unwrap();

    // The cloud got the plaintext.
    let cloud = fake.resources().into_iter().find(|r| r.urn.name() == "orders").unwrap();
    assert_eq!(cloud.inputs.get("auth_token"), Some(&json!("s3cr3t")));
    // State and the saved plan hold it sealed (the journal's files are searched by the
    // example's end-to-end test).
    let stored = store.load("dev").await.unwrap().unwrap();
    let token = orders(&stored).inputs.get("auth_token").unwrap();
    assert!(secret::is_sealed(token), "{token}");
    assert_eq!(secret::open(token).unwrap(), "s3cr3t");
    for echoed in ["auth_token", "token_copy"] {
        let output = orders(&stored).outputs.get(echoed).unwrap();
        assert!(secret::is_sealed(output), "output {echoed}: {output}");
    }
    let everything = format!("{saved}{}", serde_json::to_string(&stored).unwrap());
    assert!(!everything.contains("s3cr3t"), "the plaintext is kept somewhere: {everything}");
    // The plan shows it redacted.
    let shown = plan.render(RenderOptions::diff());
    assert!(shown.contains("auth_token") && shown.contains("[secret]") && !shown.contains("s3cr3t"), "{shown}");

    // Sealing is deterministic: nothing changed, nothing to do.
    let again = stack.preview(&Shop::new(), &stored).unwrap();
    assert!(!again.has_changes(), "{}", again.render(RenderOptions::default()));
}

/// A stack whose program sets the queue's secret `auth_token` to `token`, in plaintext
/// (as read from somewhere of the program's own).
fn token_stack(fake: &TestProvider, token: &'static str) -> Stack<()> {
    Stack::<()>::new("dev")
        .program(move |cx: &mut Cx, _: &()| -> ProgramResult {
            cx.add(Queue::new("orders").auth_token(token));
            Ok(())
        })
        .provider(fake.clone())
        .secrets(keyring())
}

#[tokio::test]
async fn changing_a_secret_shows_a_change_without_either_value_and_updates_in_place() {
    let fake = provider();
    let mut session = token_stack(&fake, "first-token").in_memory_session().await.unwrap();
    let state = session.up(&()).await.unwrap().state;
    let plan = token_stack(&fake, "second-token").preview(&(), &state).unwrap();
    assert_eq!(plan.summary.update, 1, "{plan:?}");
    let shown = plan.render(RenderOptions::diff());
    assert!(shown.contains("~ auth_token: [secret] => [secret]"), "{shown}");
    let json = serde_json::to_string(&plan).unwrap();
    assert!(!json.contains("first-token") && !json.contains("second-token"), "{json}");
    assert!(session.apply(&plan).await.unwrap().succeeded());
    let cloud = fake.resources().into_iter().find(|r| r.urn.name() == "orders").unwrap();
    assert_eq!(cloud.inputs.get("auth_token"), Some(&json!("second-token")));
}

#[tokio::test]
async fn a_secret_without_a_key_is_refused_by_name_before_any_call() {
    let fake = provider();
    let keyless = Stack::<Shop>::new("dev").program(shop_program).provider(fake.clone());
    let mut session = keyless.in_memory_session().await.unwrap();
    let err = session.up(&Shop::new()).await.unwrap_err();
    let Error::Invalid(errors) = &err else { panic!("{err}") };
    assert!(matches!(&errors.0[..], [ValidationError::NoSecretsKey { property: "auth_token", .. }]), "{err}");
    let message = err.to_string();
    assert!(message.contains("test:queue:Queue") && message.contains("orders") && message.contains("CAIRN_PASSPHRASE"), "{message}");
    assert!(fake.calls().is_empty(), "no call was made");
}

#[test]
fn a_check_failure_of_a_secret_does_not_quote_it() {
    let err = ValidationError::Invalid {
        urn: cairn_sdk::Urn::new("dev", "test:queue:Queue", "orders"),
        failure: cairn_sdk::CheckFailure::new("auth_token", Some(&keyring().seal(&json!("s3cr3t"))), "be longer"),
    };
    assert!(!err.to_string().contains("s3cr3t") && err.to_string().contains("[secret]"), "{err}");
}

#[derive(Clone, Default, serde::Serialize, serde::Deserialize)]
struct Configured {
    #[serde(default)]
    password: Option<Secret<String>>,
}

#[tokio::test]
async fn what_a_program_computes_from_a_secret_is_sealed_too_and_opens_to_the_computed_value() {
    let fake = provider();
    let key = Keyring::from_key(&[43; 64]).unwrap();
    let password = Secret::seal(&key, &"hunter22".to_owned());
    let stack = Stack::<Configured>::new("dev")
        .program(|cx: &mut Cx, c: &Configured| -> ProgramResult {
            let q = cx.add(Queue::new("orders"));
            if let Some(password) = &c.password {
                // A secret given to a secret input, and a value computed from it.
                cx.add(Queue::new("cache").auth_token(password));
                cx.export("url", interpolate!("redis://:{}@{}", password, q.arn()));
            }
            Ok(())
        })
        .provider(fake.clone());
    let mut session = stack.in_memory_session().await.unwrap();
    let report = session.up(&Configured { password: Some(password) }).await.unwrap();
    assert!(report.succeeded());
    let url = report.state.outputs.get("url").unwrap();
    assert!(secret::is_sealed(url) && !url.to_string().contains("hunter22"), "{url}");
    assert_eq!(secret::open(url).unwrap(), Value::from("redis://:hunter22@arn:test:orders"));
    let cloud = fake.resources().into_iter().find(|r| r.urn.name() == "cache").unwrap();
    assert_eq!(cloud.inputs.get("auth_token"), Some(&json!("hunter22")));
    assert!(!session.preview(&Configured { password: Some(Secret::seal(&key, &"hunter22".to_owned())) }).unwrap().has_changes());
}

#[tokio::test]
async fn a_plan_holding_a_secret_whose_key_is_not_loaded_is_refused_before_any_call() {
    let fake = provider();
    // A sealed value of a key this process never loaded (made elsewhere, say).
    let foreign: Secret<String> = serde_json::from_value(json!({ secret::SEALED_KEY: "00ff00ff00ff:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA" })).unwrap();
    let stack = Stack::<()>::new("dev").provider(fake.clone()).program(move |cx: &mut Cx, _: &()| -> ProgramResult {
        cx.add(Queue::new("orders").auth_token(&foreign));
        Ok(())
    });
    let mut session = stack.in_memory_session().await.unwrap();
    let err = session.up(&()).await.unwrap_err();
    assert!(matches!(err, Error::SecretLocked { ref property, .. } if property == "auth_token"), "{err}");
    assert!(err.to_string().contains("00ff00ff00ff") && err.to_string().contains("CAIRN_PASSPHRASE"), "{err}");
    assert!(fake.calls().is_empty(), "no call was made");
}

#[tokio::test]
async fn a_secret_inside_a_list_stays_where_it_was_after_a_refresh_and_shows_no_drift() {
    let fake = provider();
    let key = keyring();
    let hidden = Secret::seal(&key, &"subnet-hidden".to_owned());
    let stack = Stack::<()>::new("dev")
        .provider(fake.clone())
        .secrets(key.clone())
        .program(move |cx: &mut Cx, _: &()| -> ProgramResult {
            let subnets = json!(["subnet-open", hidden.sealed()]);
            let mut web = Group::new("web").image("ami-1");
            cairn_sdk::Resource::decl_mut(&mut web).set::<Value>("subnets", subnets);
            cx.add(web);
            Ok(())
        });
    let mut session = stack.in_memory_session().await.unwrap();
    assert!(session.up(&()).await.unwrap().succeeded());
    let cloud = fake.resources().into_iter().find(|r| r.urn.name() == "web").unwrap();
    assert_eq!(cloud.inputs.get("subnets"), Some(&json!(["subnet-open", "subnet-hidden"])));

    let refreshed = session.refresh().await.unwrap();
    let web = refreshed.state.resources.iter().find(|r| r.urn.name() == "web").unwrap();
    let subnets = web.inputs.get("subnets").unwrap();
    assert_eq!(subnets[0], json!("subnet-open"), "only the secret is sealed: {subnets}");
    assert!(secret::is_sealed(&subnets[1]), "{subnets}");
    let plan = session.preview(&()).unwrap();
    assert!(!plan.has_changes(), "{}", plan.render(RenderOptions::diff()));
}

#[tokio::test]
async fn the_literal_parts_of_a_computed_secret_input_are_sealed_in_the_saved_plan() {
    let fake = provider();
    let plain = String::from("plain-part-7c1d");
    let stack = Stack::<()>::new("dev")
        .provider(fake.clone())
        .secrets(keyring())
        .program(move |cx: &mut Cx, _: &()| -> ProgramResult {
            let dlq = cx.add(Queue::new("dlq"));
            cx.add(Queue::new("orders").auth_token(interpolate!("{}@{}", plain.as_str(), dlq.arn())));
            Ok(())
        });
    let mut session = stack.in_memory_session().await.unwrap();
    let plan = session.preview(&()).unwrap();
    let saved = serde_json::to_string(&plan).unwrap();
    assert!(!saved.contains("plain-part-7c1d"), "a part of the secret is in the saved plan: {saved}");
    assert!(session.apply(&plan).await.unwrap().succeeded());
    let cloud = fake.resources().into_iter().find(|r| r.urn.name() == "orders").unwrap();
    assert_eq!(cloud.inputs.get("auth_token"), Some(&json!("plain-part-7c1d@arn:test:dlq")));
}

#[tokio::test]
async fn a_state_secret_sealed_with_a_key_not_loaded_stops_the_plan_before_any_call() {
    let fake = provider();
    let stack = token_stack(&fake, "first-token");
    let mut state = stack.in_memory_session().await.unwrap().up(&()).await.unwrap().state;
    // As state reads when the key it was sealed with is not the one loaded (a wrong
    // passphrase): its secret names another key.
    let foreign = json!({ secret::SEALED_KEY: "00ff00ff00ff:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA" });
    let orders = state.resources.iter_mut().find(|r| r.urn.name() == "orders").unwrap();
    orders.inputs.insert("auth_token", foreign);
    let calls = fake.calls().len();

    for err in [stack.preview(&(), &state).unwrap_err(), stack.preview_destroy(&state).unwrap_err()] {
        assert!(matches!(err, Error::SecretLocked { ref urn, ref property, .. } if urn.name() == "orders" && property == "auth_token"), "{err}");
        assert!(err.to_string().contains("00ff00ff00ff"), "{err}");
    }
    let mut session = session_at(&stack, &state).await;
    assert!(matches!(session.up(&()).await, Err(Error::SecretLocked { .. })));
    assert_eq!(fake.calls().len(), calls, "no call was made");
}
