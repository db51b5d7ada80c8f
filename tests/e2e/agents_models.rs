//! Agents that think: an agent configured with a model runs it through the real Langflow
//! (TEST_LANGFLOW_URL) against a fake OpenAI-compatible model on loopback
//! ([`crate::fake_model`]). The tests assert on what the model received (system message, brand
//! voice, tone, audience, the session's history and its absence after ClearSession), on the
//! tokens streamed as the model produces them, on recorded usage, on how each model fault is
//! answered and recorded, and that the model's key, given by reference, is nowhere in our
//! database, logs, answers or errors.

use std::time::Duration;

use engarde::proto::agent::v1 as pb;
use tokio::time::Instant;
use tonic::Code;

use crate::agents_execution::{active_agent_with, collect_stream, execute, get_agent, spawn_with_langflow};
use crate::both_backends;
use crate::fake_model::{ANSWER_WORDS, Behaviour, FakeModel, TEST_MODEL_KEY, TEST_MODEL_KEY_VAR, usage_of};
use crate::helpers::*;
use crate::langflow_support::{FakeLangflow, real_langflow_url};

const SYSTEM: &str = "You are EnGarde's copywriter. Answer in one sentence.";

fn model(fake: &FakeModel) -> pb::ModelSettings {
    pb::ModelSettings {
        // Langflow spells it "OpenAI"; any case is taken and stored as Langflow spells it.
        provider: "openai".into(),
        model_name: "fake-gpt".into(),
        base_url: fake.base_url(),
        system_message: SYSTEM.into(),
        api_key_ref: TEST_MODEL_KEY_VAR.into(),
        temperature: Some(0.2),
        max_tokens: Some(256),
    }
}

fn voice(model: pb::ModelSettings) -> pb::AgentConfig {
    pb::AgentConfig {
        brand_voice: "Bold and warm".into(),
        tone: "playful".into(),
        target_audience: "Small-business owners".into(),
        model: Some(model),
        extra: Default::default(),
    }
}

/// An ACTIVE agent of `tenant` made from a new workflow, configured with `config`.
async fn thinking_agent(app: &TestApp, tenant: &str, config: pb::AgentConfig) -> pb::Agent {
    let overrides = pb::AgentOverrides { configuration: Some(config), ..Default::default() };
    active_agent_with(app, tenant, Some(overrides)).await.1
}

fn usage(execution: &pb::Execution) -> (i64, i64) {
    let u = execution.token_usage.expect("usage recorded");
    (u.prompt_tokens, u.completion_tokens)
}

/// Everything agent-service stored, as text: the SQLite file (and its WAL) or a PostgreSQL dump.
fn stored(db: &TestDb) -> String {
    match db.backend() {
        Backend::Sqlite => {
            let path = db.url().trim_start_matches("sqlite://").to_owned();
            let mut bytes = std::fs::read(&path).expect("read the SQLite file");
            bytes.extend(std::fs::read(format!("{path}-wal")).unwrap_or_default());
            String::from_utf8_lossy(&bytes).into_owned()
        }
        Backend::Postgres => {
            let output =
                std::process::Command::new("pg_dump").args(["--data-only", db.url()]).output().expect("pg_dump runs");
            assert!(output.status.success(), "pg_dump: {}", String::from_utf8_lossy(&output.stderr));
            String::from_utf8_lossy(&output.stdout).into_owned()
        }
    }
}

both_backends!(
    async fn an_agent_runs_its_model_with_its_voice_and_the_session_as_memory(backend) {
        let fake = FakeModel::start().await;
        fake.set(Behaviour::Answer { chunk_delay: Duration::ZERO });
        let app = spawn_with_langflow(backend, &real_langflow_url(), &[]).await;
        let agent = thinking_agent(&app, "tenant-a", voice(model(&fake))).await;
        let configured = agent.configuration.as_ref().unwrap().model.as_ref().unwrap();
        assert_eq!(configured.provider, "OpenAI", "stored as Langflow spells it");
        assert_eq!(configured.api_key_ref, TEST_MODEL_KEY_VAR);
        let mut answers = format!("{agent:?}");
        let mut executions = app.executions("tenant-a").await;

        // First turn: the model gets the system message, the voice and the input.
        let first = executions.execute_agent(execute(&agent.id, "spring sale", "chat")).await.unwrap().into_inner();
        answers.push_str(&format!("{first:?}"));
        let first = first.execution.unwrap();
        assert_eq!(first.output, ANSWER_WORDS.concat());
        let told = fake.last();
        assert_eq!(told.authorization, format!("Bearer {TEST_MODEL_KEY}"), "Langflow read the key it was named");
        assert_eq!(told.body["model"], "fake-gpt");
        let limit = if told.body["max_tokens"].is_null() { &told.body["max_completion_tokens"] } else { &told.body["max_tokens"] };
        assert_eq!(*limit, 256, "{}", told.body);
        let messages = told.messages();
        assert_eq!(messages[0], ("system".to_owned(), SYSTEM.to_owned()), "{messages:?}");
        let prompt = &messages.last().unwrap().1;
        for said in ["spring sale", "Bold and warm", "playful", "Small-business owners", "Write a post about"] {
            assert!(prompt.contains(said), "the model was told {said:?}: {prompt}");
        }
        assert!(!prompt.contains("Conversation so far"), "a new session has no history: {prompt}");
        assert_eq!(usage(&first), usage_of(&told.body), "the usage the model reported");

        // Second turn of the same session: the model is given the first.
        let second = executions.execute_agent(execute(&agent.id, "and for summer?", "chat")).await.unwrap().into_inner();
        answers.push_str(&format!("{second:?}"));
        let second = second.execution.unwrap();
        let prompt = fake.last().text();
        assert!(prompt.contains("Conversation so far:\nUser: spring sale\nAssistant: Fresh ideas"), "{prompt}");
        assert!(prompt.contains("and for summer?"), "{prompt}");

        // Another session knows nothing of it.
        executions.execute_agent(execute(&agent.id, "autumn", "other")).await.unwrap();
        assert!(!fake.last().text().contains("spring sale"), "sessions are apart");

        // ClearSession: the model forgets.
        executions
            .clear_session(pb::ClearSessionRequest {
                agent_id: agent.id.clone(),
                session_id: "chat".into(),
                ..Default::default()
            })
            .await
            .unwrap();
        let third = executions.execute_agent(execute(&agent.id, "winter", "chat")).await.unwrap().into_inner();
        answers.push_str(&format!("{third:?}"));
        let third = third.execution.unwrap();
        let prompt = fake.last().text();
        assert!(!prompt.contains("spring sale") && !prompt.contains("Conversation so far"), "forgotten: {prompt}");

        // Usage is summed on the agent, and shown with the installed agents.
        let mut agents = app.agents("tenant-a").await;
        let now = get_agent(&mut agents, &agent.id).await;
        answers.push_str(&format!("{now:?}"));
        let runs = fake.received();
        assert_eq!(runs.len(), 4);
        let expected = runs.iter().map(|r| usage_of(&r.body)).fold((0, 0), |a, u| (a.0 + u.0, a.1 + u.1));
        let summed = now.token_usage.unwrap();
        assert_eq!((summed.prompt_tokens, summed.completion_tokens), expected);
        assert_eq!(now.total_executions, 4);
        assert!(usage(&second).0 > usage(&first).0 && usage(&third).0 < usage(&second).0, "history costs tokens");
        let installed = agents
            .list_installed_agents(pb::ListInstalledAgentsRequest::default())
            .await
            .unwrap()
            .into_inner()
            .installed_agents;
        let listed = installed.iter().find_map(|i| i.agent.as_ref().filter(|a| a.id == agent.id)).unwrap();
        assert_eq!(listed.token_usage, now.token_usage);

        // The key went by reference: it is in none of our answers, our database or our logs.
        // A caller who gives the key itself in its place is refused without it being echoed.
        let mut pasted = model(&fake);
        pasted.api_key_ref = TEST_MODEL_KEY.into();
        let refused = expect_code(
            agents
                .update_agent_config(pb::UpdateAgentConfigRequest {
                    agent_id: agent.id.clone(),
                    configuration: Some(voice(pasted)),
                    ..Default::default()
                })
                .await,
            Code::InvalidArgument,
        );
        assert_eq!(field_violations(&refused)[0].0, "configuration.model.api_key_ref");
        answers.push_str(&format!("{refused:?}"));
        assert!(!answers.contains(TEST_MODEL_KEY), "an answer carries the key");
        assert!(!stored(&app.agent_db).contains(TEST_MODEL_KEY), "the database holds the key");
        assert!(!stored(&app.agent_db).contains("sk-engarde-test"), "the database holds part of the key");
        let logs = app.agent.logs() + &app.workflow.logs();
        assert!(!logs.contains(TEST_MODEL_KEY) && !logs.contains("sk-engarde-test"), "the logs hold the key");
    }
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_tokens_reach_the_caller_as_the_model_produces_them() {
    use pb::execution_event::Event;
    let fake = FakeModel::start().await;
    fake.set(Behaviour::Answer { chunk_delay: Duration::from_millis(150) });
    let app = spawn_with_langflow(Backend::Sqlite, &real_langflow_url(), &[]).await;
    let agent = thinking_agent(&app, "tenant-a", voice(model(&fake))).await;
    let mut executions = app.executions("tenant-a").await;

    let mut stream =
        executions.stream_execute_agent(execute(&agent.id, "spring sale", "s")).await.unwrap().into_inner();
    let mut texts: Vec<(String, Instant)> = Vec::new();
    let mut finished = None;
    while let Some(event) = stream.message().await.unwrap() {
        match event.event.unwrap() {
            Event::OutputText(text) => texts.push((text, Instant::now())),
            Event::Finished(execution) => finished = Some(execution),
            _ => {}
        }
    }
    let finished = finished.expect("the record came last");
    assert_eq!(finished.status, pb::ExecutionStatus::Succeeded as i32);
    assert!(texts.len() >= 5, "the answer came in chunks: {texts:?}");
    let streamed: String = texts.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(streamed, ANSWER_WORDS.concat(), "every token once, in order");
    assert_eq!(finished.output, streamed);
    let model_done = fake.finished_at().expect("the model finished");
    assert!(texts[0].1 < model_done, "the first chunk arrived before the model had finished");
    assert_eq!(usage(&finished), usage_of(&fake.last().body));

    // A caller that goes away does not cut the record off.
    let mut stream =
        executions.stream_execute_agent(execute(&agent.id, "left early", "s2")).await.unwrap().into_inner();
    let _started = stream.message().await.unwrap();
    drop(stream);
    eventually(Duration::from_secs(30), "the abandoned stream's execution is recorded", || {
        let app = &app;
        let id = agent.id.clone();
        async move { get_agent(&mut app.agents("tenant-a").await, &id).await.successful_executions == 2 }
    })
    .await;
    let (events, error) = collect_stream(&mut executions, execute(&agent.id, "again", "s3")).await;
    assert!(error.is_none() && events.len() > 2);
}

/// A model fault, how it is answered, and what the answer must say.
async fn expect_fault(
    executions: &mut ExecutionClient,
    agent_id: &str,
    deadline: Option<Duration>,
    code: Code,
    says: &[&str],
) -> tonic::Status {
    let mut request = tonic::Request::new(execute(agent_id, "spring sale", ""));
    if let Some(deadline) = deadline {
        request.set_timeout(deadline);
    }
    let status = executions.execute_agent(request).await.expect_err("the model failed");
    assert_eq!(status.code(), code, "{status:?}");
    for said in says {
        assert!(status.message().contains(said), "{said:?} in {status:?}");
    }
    status
}

both_backends!(
    async fn model_faults_are_answered_and_recorded_as_users_expect(backend) {
        let fake = FakeModel::start().await;
        let app = spawn_with_langflow(backend, &real_langflow_url(), &[]).await;
        let agent = thinking_agent(&app, "tenant-a", voice(model(&fake))).await;
        let mut executions = app.executions("tenant-a").await;
        let mut agents = app.agents("tenant-a").await;

        fake.set(Behaviour::Fail(429));
        expect_fault(&mut executions, &agent.id, None, Code::ResourceExhausted, &["rate limit", "retry after 7 s"]).await;
        fake.set(Behaviour::Fail(500));
        expect_fault(&mut executions, &agent.id, None, Code::Unavailable, &["model is unavailable"]).await;
        fake.set(Behaviour::Slow(Duration::from_secs(8)));
        expect_fault(&mut executions, &agent.id, Some(Duration::from_secs(3)), Code::DeadlineExceeded, &[]).await;

        // Replayed with its request id, a rate limit answers as it did (from the record).
        fake.set(Behaviour::Fail(429));
        let mut request = execute(&agent.id, "spring sale", "");
        request.request_id = "rate-limited-once".into();
        let first = executions.execute_agent(request.clone()).await.unwrap_err();
        let again = executions.execute_agent(request).await.unwrap_err();
        assert_eq!((first.code(), again.code()), (Code::ResourceExhausted, Code::ResourceExhausted));

        // A credential that names nothing Langflow holds.
        fake.set(Behaviour::Answer { chunk_delay: Duration::ZERO });
        let mut unknown = model(&fake);
        unknown.api_key_ref = "ENGARDE_NO_SUCH_KEY".into();
        agents
            .update_agent_config(pb::UpdateAgentConfigRequest {
                agent_id: agent.id.clone(),
                configuration: Some(voice(unknown)),
                ..Default::default()
            })
            .await
            .unwrap();
        let status = expect_fault(
            &mut executions,
            &agent.id,
            None,
            Code::FailedPrecondition,
            &["ENGARDE_NO_SUCH_KEY", "credential"],
        )
        .await;
        assert!(!status.message().contains(TEST_MODEL_KEY));
        // A credential that holds a wrong key: HOME is in Langflow's environment (a directory, no
        // key), and the model answers 401 to it.
        let mut wrong = model(&fake);
        wrong.api_key_ref = "HOME".into();
        agents
            .update_agent_config(pb::UpdateAgentConfigRequest {
                agent_id: agent.id.clone(),
                configuration: Some(voice(wrong)),
                ..Default::default()
            })
            .await
            .unwrap();
        expect_fault(&mut executions, &agent.id, None, Code::FailedPrecondition, &["\"HOME\"", "refused its credential"])
            .await;
        let given = fake.last().authorization;
        assert!(given.starts_with("Bearer /") && !given.contains(TEST_MODEL_KEY), "what HOME holds: {given}");

        // Every fault is recorded with its reason; none put the agent in ERROR.
        let recorded = crate::agents_execution::recorded_executions(
            &mut executions,
            pb::ListExecutionsRequest { agent_id: agent.id.clone(), ..Default::default() },
        )
        .await;
        assert_eq!(recorded.len(), 6, "{recorded:?}");
        for e in &recorded {
            assert_eq!(e.status, pb::ExecutionStatus::Failed as i32);
            assert!(!e.error.is_empty());
        }
        let reasons: Vec<&str> = recorded.iter().map(|e| e.error.as_str()).collect();
        assert!(reasons.iter().any(|r| r.contains("retry after 7 s")), "{reasons:?}");
        assert!(reasons.iter().any(|r| r.contains("did not answer in time")), "{reasons:?}");
        let now = get_agent(&mut agents, &agent.id).await;
        assert_eq!(now.status, pb::AgentStatus::Active as i32, "{now:?}");
    }
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_settings_are_checked_against_the_catalog_of_langflow() {
    let langflow = FakeLangflow::start().await;
    let fake = FakeModel::start().await;
    let app = spawn_with_langflow(Backend::Sqlite, &langflow.url(), &[]).await;
    let mut agents = app.agents("tenant-a").await;
    let create = |model: pb::ModelSettings| pb::CreateAgentRequest {
        name: "Copy".into(),
        agent_type: pb::AgentType::CopyGeneration as i32,
        configuration: Some(voice(model)),
        ..Default::default()
    };

    let mut unknown = model(&fake);
    unknown.provider = "Mistral".into();
    let status = expect_code(agents.create_agent(create(unknown)).await, Code::InvalidArgument);
    let violations = field_violations(&status);
    assert_eq!(violations[0].0, "configuration.model.provider");
    assert!(violations[0].1.contains("\"Ollama\", \"OpenAI\""), "the catalog's providers: {violations:?}");

    let mut ollama = model(&fake);
    ollama.provider = "OLLAMA".into();
    let status = expect_code(agents.create_agent(create(ollama.clone())).await, Code::InvalidArgument);
    assert_eq!(
        field_violations(&status)[0].0,
        "configuration.model.max_tokens",
        "Ollama's component has no max_tokens"
    );
    ollama.max_tokens = None;
    let created = agents.create_agent(create(ollama)).await.unwrap().into_inner();
    assert_eq!(created.configuration.unwrap().model.unwrap().provider, "Ollama");

    let mut bad = model(&fake);
    bad.model_name = String::new();
    bad.base_url = "ftp://models".into();
    bad.api_key_ref = TEST_MODEL_KEY.into();
    let status = expect_code(agents.create_agent(create(bad)).await, Code::InvalidArgument);
    let fields: Vec<String> = field_violations(&status).into_iter().map(|(f, _)| f).collect();
    assert_eq!(
        fields,
        ["configuration.model.model_name", "configuration.model.base_url", "configuration.model.api_key_ref"]
    );
    assert!(!format!("{status:?}").contains(TEST_MODEL_KEY), "the key is not echoed");
    assert!(!app.agent.logs().contains(TEST_MODEL_KEY), "nor logged");

    // Langflow away before its catalog was read: nothing can be checked, the caller may retry.
    drop(langflow);
    let mut fresh = FakeLangflow::start().await;
    let app = spawn_with_langflow(Backend::Sqlite, &fresh.url(), &[]).await;
    fresh.stop().await;
    let mut agents = app.agents("tenant-a").await;
    expect_code(agents.create_agent(create(model(&fake))).await, Code::Unavailable);
}

/// The README's model session, as written, run with grpcurl against the services, the real
/// Langflow and the fake model in place of a local one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_model_session_runs_as_written() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).expect("README.md");
    let marker = readme.find("<!-- model-session").expect("the README marks its model session");
    let block = &readme[marker..];
    let start = block.find("```sh\n").expect("a sh block") + "```sh\n".len();
    let script = &block[start..start + block[start..].find("```").expect("the block ends")];

    let fake = FakeModel::start().await;
    fake.set(Behaviour::Answer { chunk_delay: Duration::from_millis(20) });
    let app = spawn_with_langflow(Backend::Sqlite, &real_langflow_url(), &[]).await;
    let grpcurl = std::env::var("GRPCURL").unwrap_or_else(|_| "grpcurl".into());
    let grpcurl_dir = std::path::Path::new(&grpcurl).parent().map(|d| d.display().to_string()).unwrap_or_default();
    let script = script.to_owned();
    let agent_addr = app.agent.url().trim_start_matches("http://").to_owned();
    let model_url = fake.base_url();
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new("bash")
            .args(["-euo", "pipefail", "-c", &script])
            .env("AG", agent_addr)
            .env("MODEL_URL", model_url)
            .env("MODEL_NAME", "fake-gpt")
            .env("PATH", format!("{grpcurl_dir}:{}", std::env::var("PATH").unwrap_or_default()))
            .output()
            .expect("bash runs")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "the session failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("AGENT_STATUS_ACTIVE"), "{stdout}");
    assert!(stdout.contains(&ANSWER_WORDS.concat()), "the model answered: {stdout}");
    assert!(stdout.matches("outputText").count() >= 5, "streamed in chunks: {stdout}");
    assert!(stdout.contains("promptTokens"), "usage summed: {stdout}");
    let calls = fake.received();
    assert_eq!(calls.len(), 2, "one model call per execution");
    assert_eq!(calls[1].messages()[0], ("system".to_owned(), "You write for our brand. Be brief.".to_owned()));
    assert!(calls[1].text().contains("User: our spring sale"), "the second turn remembers the first");
}

/// Ollama, by its own API: the same agent, with provider "Ollama" and the fake's Ollama address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_runs_an_ollama_model_through_its_own_api() {
    let fake = FakeModel::start_on("127.0.0.2").await;
    fake.set(Behaviour::Answer { chunk_delay: Duration::from_millis(20) });
    let app = spawn_with_langflow(Backend::Sqlite, &real_langflow_url(), &[]).await;
    let ollama = pb::ModelSettings {
        provider: "ollama".into(),
        model_name: "llama-fake".into(),
        base_url: fake.ollama_url(),
        system_message: SYSTEM.into(),
        temperature: Some(0.2),
        ..Default::default()
    };
    let agent = thinking_agent(&app, "tenant-a", voice(ollama)).await;
    assert_eq!(agent.configuration.as_ref().unwrap().model.as_ref().unwrap().provider, "Ollama");
    let mut executions = app.executions("tenant-a").await;
    let done = executions.execute_agent(execute(&agent.id, "spring sale", "chat")).await.unwrap().into_inner();
    let done = done.execution.unwrap();
    assert_eq!(done.output, ANSWER_WORDS.concat());
    let told = fake.last();
    assert_eq!(told.body["model"], "llama-fake");
    assert_eq!(told.messages()[0], ("system".to_owned(), SYSTEM.to_owned()));
    assert!(told.text().contains("spring sale") && told.text().contains("Bold and warm"), "{}", told.text());

    // Streamed, Ollama's chunks reach the caller as they come.
    let (events, error) = collect_stream(&mut executions, execute(&agent.id, "and summer?", "chat")).await;
    assert!(error.is_none(), "{error:?}");
    let texts: Vec<&str> = events
        .iter()
        .filter_map(|e| if let pb::execution_event::Event::OutputText(t) = e { Some(t.as_str()) } else { None })
        .collect();
    assert!(texts.len() >= 5, "{texts:?}");
    assert_eq!(texts.concat(), ANSWER_WORDS.concat());
    assert!(fake.last().text().contains("User: spring sale"), "the session's memory");
}
