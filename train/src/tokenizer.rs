//! The target's tokenizer, read from its GGUF file by llama.cpp (vocabulary
//! only, no weights), so that every token id the training sees is one the
//! target and the engine agree on.

use std::path::{Path, PathBuf};

use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;

/// A tokenizer that cannot be loaded or used.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// The model file is missing or unreadable by llama.cpp.
    #[error("cannot load the tokenizer of {path}: {reason}")]
    Load { path: PathBuf, reason: String },
    /// llama.cpp refused to tokenize.
    #[error("cannot tokenize: {0}")]
    Tokenize(String),
}

/// The target model's vocabulary.
pub struct Tokenizer {
    model: LlamaModel,
    path: PathBuf,
}

impl Tokenizer {
    /// Load the vocabulary of the GGUF model at `path`.
    pub fn load(path: &Path) -> Result<Self, TokenizerError> {
        let load_error = |reason: String| TokenizerError::Load {
            path: path.to_path_buf(),
            reason,
        };
        if !path.is_file() {
            return Err(load_error("no such file".into()));
        }
        let backend =
            specdec_backend::engine::runtime::backend().map_err(|e| load_error(e.to_string()))?;
        let params = LlamaModelParams::default().with_vocab_only(true);
        let model = LlamaModel::load_from_file(backend, path, &params)
            .map_err(|e| load_error(e.to_string()))?;
        Ok(Self {
            model,
            path: path.to_path_buf(),
        })
    }

    /// The GGUF file the vocabulary came from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Number of token ids.
    pub fn vocab_size(&self) -> usize {
        self.model.vocab().n_tokens().max(0) as usize
    }

    /// End-of-sequence token (the separator between packed documents).
    pub fn eos(&self) -> u32 {
        self.model.vocab().eos().0 as u32
    }

    /// Token ids of `text`; special tokens in the text are parsed as such
    /// (chat templates contain them).
    pub fn encode(&self, text: &str, add_bos: bool) -> Result<Vec<u32>, TokenizerError> {
        let tokens = self.model.vocab().tokenize(text.as_bytes(), add_bos, true);
        if tokens.is_empty() && !text.is_empty() {
            return Err(TokenizerError::Tokenize(format!(
                "llama.cpp returned no tokens for {} bytes of text",
                text.len()
            )));
        }
        Ok(tokens.into_iter().map(|t| t.0 as u32).collect())
    }

    /// Text of token ids (lossy for tokens that split a UTF-8 character).
    pub fn decode(&self, tokens: &[u32]) -> String {
        let mut bytes = Vec::new();
        for &t in tokens {
            bytes.extend_from_slice(&self.model.vocab().token_to_piece(
                LlamaToken(t as i32),
                false,
                None,
            ));
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

impl Tokenizer {
    /// The target's chat template applied to one user message, ending where
    /// the assistant's answer begins (what the engine renders for a chat request).
    pub fn chat_prompt(&self, user: &str) -> Result<String, TokenizerError> {
        let template = self.model.chat_template(None).map_err(|e| {
            TokenizerError::Tokenize(format!("the model has no chat template: {e}"))
        })?;
        let message = llama_cpp_2::model::LlamaChatMessage::new("user".into(), user.into())
            .map_err(|e| TokenizerError::Tokenize(format!("message contains a NUL byte: {e}")))?;
        self.model
            .apply_chat_template(&template, &[message], true)
            .map_err(|e| TokenizerError::Tokenize(format!("cannot apply the chat template: {e}")))
    }
}
