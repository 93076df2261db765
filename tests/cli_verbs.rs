//! A program's own verbs (`Cli::verb`) and the stack outputs they are built on: `up`
//! records what the program exports, and a verb reads it without parsing arguments or
//! digging in state.

use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use cairn::cli::{Cli, CliError, VerbContext};
use cairn::testing::TestProvider;
use cairn::{interpolate, Cx, ProgramResult, Stack};

cairn::resource! {
    /// A bucket of the fake cloud.
    pub struct Bucket {
        token: "test:store:Bucket",
        schema: BUCKET,
        inputs: BucketInputs,
        handle: BucketRef,
    }
    inputs {
        name: String = required(),
    }
    outputs {
        id: String,
    }
}

fn program(cx: &mut Cx, _: &u32) -> ProgramResult {
    let bucket = cx.add(Bucket::new("assets").name("assets"));
    cx.export("url", interpolate!("https://{}.example.com/", bucket.id()));
    Ok(())
}

/// What the `show-url` verb saw: the stack, its arguments and the `url` output.
type Seen = Arc<Mutex<Vec<(String, Vec<String>, String)>>>;

fn cli(cloud: &TestProvider, seen: &Seen) -> Cli<u32> {
    let cloud = cloud.clone();
    let seen = seen.clone();
    Cli::new(move |name: &str| Stack::<u32>::new(name).program(program).provider(cloud.clone())).verb(
        "show-url",
        "Print the assets' address",
        move |cx: VerbContext| {
            let seen = seen.clone();
            async move {
                let url = cx.output_str("url")?.to_owned();
                seen.lock().unwrap().push((cx.stack().to_owned(), cx.args().to_vec(), url));
                Ok::<_, CliError>(ExitCode::SUCCESS)
            }
        },
    )
}

#[test]
fn a_programs_own_verb_reads_the_outputs_up_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let state = format!("file://{}", dir.path().display());
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (cloud, seen) = (TestProvider::new("test"), Seen::default());
    let run = |args: &[&str]| runtime.block_on(cli(&cloud, &seen).try_run_with(["prog"].iter().chain(args)));

    // Before any deploy the verb says what is missing.
    let err = run(&["--state", &state, "show-url"]).unwrap_err();
    assert_eq!(err.to_string(), "stack 'dev' has no output 'url'; it has none yet: run `up` first");

    run(&["--state", &state, "--stack", "web", "up", "--yes"]).unwrap();
    let bucket = cloud.resources().pop().expect("up created the bucket");
    // `--stack` and `--state` may follow the verb, as they may follow Cairn's own.
    run(&["show-url", "--stack", "web", "--verbose", "--state", &state]).unwrap();
    assert_eq!(
        seen.lock().unwrap().as_slice(),
        [("web".to_owned(), vec!["--verbose".to_owned()], format!("https://{}.example.com/", bucket.id))]
    );

    let err = run(&["--state", &state, "--stack", "web", "nope"]).unwrap_err();
    assert!(err.to_string().starts_with("unknown command 'nope'; the commands are: preview, up,"), "{err}");
    assert!(err.to_string().contains(", show-url (see --help)"), "{err}");
}

#[test]
#[should_panic(expected = "Cli::verb(\"up\"): a command of that name exists already")]
fn a_verb_cannot_take_the_name_of_one_of_cairns() {
    let _ = Cli::new(|name: &str| Stack::<u32>::new(name)).verb("up", "shadowed", |_cx: VerbContext| async { Ok(ExitCode::SUCCESS) });
}
