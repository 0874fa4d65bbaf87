//! Requests made ready for the engine thread: validated, their chat
//! template applied and tokenized, on a thread of their own (llama.cpp's
//! tokenizer is a blocking call, and the engine thread's time belongs to
//! decoding). The thread hands prepared requests to the engine in the order
//! they came, and refuses bad ones on the request's own channel.

use std::sync::Arc;

use llama_cpp_2::model::{LlamaChatMessage, LlamaModel};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};

use crate::config::DraftParams;
use crate::registry::UNKNOWN_LANGUAGE;
use crate::speculative::sampling::SamplingParams;

use super::error::EngineError;
use super::load::LoadedDrafter;
use super::request::{DrafterChoice, GenerationEvent, GenerationRequest, Prompt};
use super::worker::Command;

/// A candidate drafter of a request, resolved against the loaded drafters.
#[derive(Debug, Clone, Copy)]
pub(super) struct Candidate {
    /// Index into the loaded drafters (and their cost models).
    pub(super) drafter: usize,
    /// The drafter's model (index into the slot's drafter contexts), if any.
    pub(super) model: Option<usize>,
    /// Draft controls for this request.
    pub(super) draft: DraftParams,
}

/// A request, validated and tokenized, waiting for a slot.
pub(super) struct Prepared {
    pub(super) tokens: Vec<u32>,
    /// Candidate drafters in order of preference; empty: plain decoding.
    pub(super) candidates: Vec<Candidate>,
    pub(super) sampling: SamplingParams,
    pub(super) max_tokens: usize,
    pub(super) stop: Vec<String>,
    pub(super) language: String,
}

/// What preparing a request needs: the target's tokenizer and chat
/// template, the drafters and the context length.
pub(super) struct Preparer {
    pub(super) target: Arc<LlamaModel>,
    pub(super) drafters: Vec<LoadedDrafter>,
    pub(super) context: usize,
}

/// A request as it comes to the engine, with the channel of its events.
pub(super) struct Submission {
    pub(super) request: GenerationRequest,
    pub(super) events: UnboundedSender<GenerationEvent>,
}

impl Preparer {
    /// Prepare submissions until every sender is dropped, passing them on to
    /// the engine thread; ends early when the engine thread is gone.
    pub(super) fn serve(
        &self,
        mut submissions: UnboundedReceiver<Submission>,
        engine: UnboundedSender<Command>,
    ) {
        while let Some(Submission { request, events }) = submissions.blocking_recv() {
            if events.is_closed() {
                continue;
            }
            match self.prepare(request) {
                Ok(prepared) => {
                    if let Err(rejected) = engine.send(Command { prepared, events }) {
                        let _ = rejected
                            .0
                            .events
                            .send(GenerationEvent::Failed(EngineError::ShutDown));
                        return;
                    }
                }
                Err(e) => {
                    let _ = events.send(GenerationEvent::Failed(e));
                }
            }
        }
    }

    /// Validate `request`, apply the chat template and tokenize it.
    pub(super) fn prepare(&self, request: GenerationRequest) -> Result<Prepared, EngineError> {
        if request.max_tokens == 0 {
            return Err(EngineError::InvalidRequest(
                "max_tokens must be at least 1".into(),
            ));
        }
        request
            .sampling
            .validate()
            .map_err(|e| EngineError::InvalidRequest(e.message))?;
        if let Some(draft) = request.draft {
            draft.validate().map_err(EngineError::InvalidRequest)?;
        }
        let named: Vec<(&str, Option<DraftParams>)> = match &request.drafter {
            DrafterChoice::None => Vec::new(),
            DrafterChoice::Named(name) => vec![(name.as_str(), None)],
            DrafterChoice::Candidates(list) => {
                list.iter().map(|c| (c.name.as_str(), c.draft)).collect()
            }
        };
        let mut candidates: Vec<Candidate> = Vec::with_capacity(named.len());
        for (name, draft) in named {
            let index = self
                .drafters
                .iter()
                .position(|d| d.name == name)
                .ok_or_else(|| EngineError::UnknownDrafter(name.to_string()))?;
            let draft = draft
                .or(request.draft)
                .unwrap_or(self.drafters[index].draft);
            draft.validate().map_err(EngineError::InvalidRequest)?;
            // A drafter named twice is one arm.
            if candidates.iter().all(|c| c.drafter != index) {
                candidates.push(Candidate {
                    drafter: index,
                    model: self.drafters[index].model,
                    draft,
                });
            }
        }
        let text = match &request.prompt {
            Prompt::Text(text) => text.clone(),
            Prompt::Chat(messages) => self.render_chat(messages)?,
        };
        let vocab = self.target.vocab();
        let tokens: Vec<u32> = vocab
            .tokenize(text.as_bytes(), true, true)
            .into_iter()
            .map(|t| t.0 as u32)
            .collect();
        if tokens.is_empty() {
            return Err(EngineError::InvalidRequest("the prompt is empty".into()));
        }
        if tokens.len() >= self.context {
            return Err(EngineError::PromptTooLong {
                prompt_tokens: tokens.len(),
                context: self.context,
            });
        }
        Ok(Prepared {
            tokens,
            candidates,
            sampling: request.sampling,
            max_tokens: request.max_tokens,
            stop: request.stop,
            language: request.language.unwrap_or_else(|| UNKNOWN_LANGUAGE.into()),
        })
    }

    fn render_chat(&self, messages: &[super::request::ChatMessage]) -> Result<String, EngineError> {
        if messages.is_empty() {
            return Err(EngineError::InvalidRequest("messages is empty".into()));
        }
        let template = self.target.chat_template(None).map_err(|e| {
            EngineError::InvalidRequest(format!("the target model has no chat template: {e}"))
        })?;
        let chat = messages
            .iter()
            .map(|m| LlamaChatMessage::new(m.role.clone(), m.content.clone()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| {
                EngineError::InvalidRequest(format!("message contains a NUL byte: {e}"))
            })?;
        self.target
            .apply_chat_template(&template, &chat, true)
            .map_err(|e| {
                EngineError::InvalidRequest(format!("cannot apply the chat template: {e}"))
            })
    }
}
