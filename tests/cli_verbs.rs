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

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Sizes {
    web_max: u32,
}

/// `config set` checks a change against the program's config type before writing it;
/// a file that does not fit stops a verb with an error naming the file and the key.
/// A program built with `Cli::configured` on a state and a config directory of its own.
struct Configured {
    state: tempfile::TempDir,
    config: tempfile::TempDir,
    runtime: tokio::runtime::Runtime,
}

impl Configured {
    fn new() -> Self {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        Configured { state: tempfile::tempdir().unwrap(), config: tempfile::tempdir().unwrap(), runtime }
    }

    /// Runs `args`; the program's stack factory calls `seen` with the stack's name and
    /// its configuration.
    fn run<C>(&self, args: &[&str], seen: impl Fn(&str, C) + Send + Sync + 'static) -> Result<ExitCode, CliError>
    where
        C: serde::de::DeserializeOwned + Send + 'static,
    {
        let cli = Cli::configured(self.config.path(), move |name: &str, config: C| {
            seen(name, config);
            Stack::<u32>::new(name)
        });
        let state = format!("file://{}", self.state.path().display());
        self.runtime.block_on(cli.try_run_with(["prog", "--state", &state].iter().chain(args)))
    }
}

#[test]
fn config_set_checks_the_programs_type_and_the_stack_gets_its_own_file() {
    let program = Configured::new();
    let given = Arc::new(Mutex::new(Vec::new()));
    let run = |args: &[&str]| {
        let given = given.clone();
        program.run(args, move |name: &str, sizes: Sizes| given.lock().unwrap().push((name.to_owned(), sizes.web_max)))
    };
    let (config_dir, runtime) = (&program.config, &program.runtime);
    let file = config_dir.path().join("Cairn.prod.toml");

    // No file: the required key is named, with the fix.
    let err = run(&["--stack", "prod", "preview"]).unwrap_err().to_string();
    assert!(err.contains("the configuration of stack 'prod'") && err.contains("missing field `web_max`"), "{err}");
    assert!(err.contains("config set KEY VALUE --stack prod"), "{err}");

    run(&["--stack", "prod", "config", "set", "web_max", "40"]).unwrap();
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "web_max = 40\n");
    run(&["--stack", "prod", "preview"]).unwrap();
    assert_eq!(given.lock().unwrap().as_slice(), [("prod".to_owned(), 40)]);

    // A typo, or a value of the wrong type, is refused and the file left as it was.
    let err = run(&["--stack", "prod", "config", "set", "web_mx", "8"]).unwrap_err().to_string();
    assert!(err.contains("unknown field `web_mx`"), "{err}");
    let err = run(&["--stack", "prod", "config", "set", "web_max", "many"]).unwrap_err().to_string();
    assert!(err.contains("invalid type: string \"many\""), "{err}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "web_max = 40\n");
    assert!(!config_dir.path().join("Cairn.dev.toml").exists(), "another stack's file is its own");

    // Without Cli::configured, `config` says how to get it.
    let plain = Cli::new(|name: &str| Stack::<u32>::new(name));
    let err = runtime.block_on(plain.try_run_with(["prog", "config", "list"])).unwrap_err().to_string();
    assert!(err.contains("build its command line with Cli::configured"), "{err}");
}

#[derive(serde::Deserialize)]
#[serde(default)]
struct WithToken {
    web_max: u32,
    token: Option<cairn::Secret<String>>,
}

impl Default for WithToken {
    fn default() -> Self {
        WithToken { web_max: 4, token: None }
    }
}

/// `config set --secret` seals a value with the key from CAIRN_PASSPHRASE; the file
/// holds it sealed, a plaintext where the program expects a secret is refused, and a
/// verb run without the key, or with another, stops before the program runs.
#[test]
fn config_set_secret_seals_with_the_passphrase_and_a_missing_or_wrong_key_is_refused() {
    let program = Configured::new();
    let keyed = Arc::new(Mutex::new(Vec::new()));
    let run = |args: &[&str]| {
        let keyed = keyed.clone();
        program.run(args, move |_: &str, config: WithToken| keyed.lock().unwrap().push(config.token.map(|t| t.open().unwrap())))
    };
    let file = program.config.path().join("Cairn.dev.toml");
    std::env::remove_var("CAIRN_SECRETS_KEY_FILE");

    std::env::remove_var("CAIRN_PASSPHRASE");
    let err = run(&["config", "set", "--secret", "token", "hunter2-token"]).unwrap_err().to_string();
    assert!(err.contains("no key to open them: set CAIRN_PASSPHRASE"), "{err}");
    assert!(!file.exists(), "nothing was written");

    std::env::set_var("CAIRN_PASSPHRASE", "pass-one");
    run(&["config", "set", "--secret", "token", "hunter2-token"]).unwrap();
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.contains("secure = ") && text.contains("[cairn.secrets]") && !text.contains("hunter2"), "{text}");
    let err = run(&["config", "set", "token", "plain-token"]).unwrap_err().to_string();
    assert!(err.contains("config set --secret"), "{err}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), text, "the refused value was not written");
    run(&["preview"]).unwrap();
    assert_eq!(keyed.lock().unwrap().as_slice(), [Some("hunter2-token".to_owned())]);

    std::env::set_var("CAIRN_PASSPHRASE", "pass-two");
    let err = run(&["preview"]).unwrap_err().to_string();
    assert!(err.contains("not the one stack 'dev''s secrets were sealed with"), "{err}");
    let err = run(&["config", "set", "--secret", "token", "other-token"]).unwrap_err().to_string();
    assert!(err.contains("not the one stack 'dev''s secrets were sealed with"), "{err}");
    std::env::remove_var("CAIRN_PASSPHRASE");
    let err = run(&["preview"]).unwrap_err().to_string();
    assert!(err.contains("stack 'dev' has secrets"), "{err}");
    assert_eq!(keyed.lock().unwrap().len(), 1, "the program never ran without its key");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), text);
}
