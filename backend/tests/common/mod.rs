//! Shared set-up of the engine tests: the real models from the project's
//! model directory (fetched by `scripts/fetch-models`).

#![allow(dead_code)]

pub mod gguf;

use std::path::PathBuf;
use std::sync::OnceLock;

use specdec_backend::config::{DraftParams, DrafterConfig, DrafterKind, TargetConfig};
use specdec_backend::engine::{
    ChatMessage, Completion, DrafterChoice, Engine, EngineConfig, GenerationRequest, Prompt,
};
use specdec_backend::models;

/// Path of a model, failing loudly (never skipping) when it is missing.
pub fn model(file: &str) -> PathBuf {
    let path = models::model_path(file);
    assert!(
        path.is_file(),
        "{} is missing: run scripts/fetch-models first",
        path.display()
    );
    path
}

pub fn target_config(context: u32) -> TargetConfig {
    TargetConfig {
        model: model(models::DEFAULT_TARGET_FILE),
        context,
        gpu_layers: 0,
    }
}

pub fn model_drafter(name: &str, file: &str) -> DrafterConfig {
    DrafterConfig {
        name: name.into(),
        kind: DrafterKind::Model,
        languages: Vec::new(),
        model: Some(model(file)),
        gpu_layers: 0,
        draft: DraftParams::default(),
    }
}

pub fn ngram_drafter(name: &str) -> DrafterConfig {
    DrafterConfig {
        name: name.into(),
        kind: DrafterKind::Ngram,
        languages: Vec::new(),
        model: None,
        gpu_layers: 0,
        draft: DraftParams::default(),
    }
}

/// The Qwen 1.5B target with the 0.5B drafter (`qwen-0.5b`), the target itself
/// as a drafter (`self`) and prompt lookup (`ngram`), shared by the tests of a
/// binary. Two slots, so tests running in parallel interleave.
pub fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let mut config = EngineConfig::new(target_config(2048));
        config.drafters = vec![
            model_drafter("qwen-0.5b", models::DEFAULT_DRAFTER_FILE),
            model_drafter("self", models::DEFAULT_TARGET_FILE),
            ngram_drafter("ngram"),
        ];
        config.slots = 2;
        Engine::start(config).expect("the Qwen pair loads")
    })
}

pub fn chat(user: &str) -> Prompt {
    Prompt::Chat(vec![ChatMessage {
        role: "user".into(),
        content: user.into(),
    }])
}

/// A greedy request with the given drafter and fixed draft length.
pub fn greedy(
    prompt: Prompt,
    max_tokens: usize,
    drafter: Option<&str>,
    k: u32,
) -> GenerationRequest {
    let mut request = GenerationRequest::new(prompt, max_tokens);
    if let Some(name) = drafter {
        request.drafter = DrafterChoice::Named(name.into());
        request.draft = Some(DraftParams {
            max: k,
            adaptive: false,
            ..DraftParams::default()
        });
    }
    request
}

pub fn run(request: GenerationRequest) -> Completion {
    engine()
        .generate_blocking(request)
        .expect("generation succeeds")
}

/// Translation prompts in the languages the tests cover.
pub const TRANSLATIONS: &[(&str, &str)] = &[
    ("en", "Summarise in one sentence: The Debian project maintains a free operating system. Volunteers package thousands of programs and release a new stable version about every two years."),
    ("de", "Übersetze ins Englische: Das Debian-Projekt pflegt ein freies Betriebssystem. Freiwillige paketieren tausende Programme und veröffentlichen etwa alle zwei Jahre eine neue stabile Version."),
    ("fr", "Traduis en anglais : Le projet Debian maintient un système d'exploitation libre. Des bénévoles empaquettent des milliers de programmes et publient une nouvelle version stable environ tous les deux ans."),
    ("ja", "英語に翻訳してください：Debianプロジェクトは自由なオペレーティングシステムを維持しています。ボランティアが何千ものプログラムをパッケージ化し、約2年ごとに新しい安定版をリリースします。"),
    ("zh", "翻译成英文：Debian 项目维护一个自由的操作系统。志愿者打包了数千个程序，大约每两年发布一个新的稳定版本。"),
];
