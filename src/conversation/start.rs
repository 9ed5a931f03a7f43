//! A conversation from the settings: the saved one they may follow
//! (`--load`), the persona's texts, then the model loaded here or the
//! server reached. The one way every front end (ask, chat, serve) starts.

use super::{Conversation, Engine};
use crate::model::GenerationDefaults;
use crate::persona::Prompts;
use crate::settings::Settings;
use crate::template::Message;
use crate::transcript::Transcript;

/// A conversation before its model is loaded: the settings, after the saved
/// conversation they may follow (`--load`), and the persona's texts.
pub struct Start {
    pub settings: Settings,
    pub prompts: Prompts,
    messages: Vec<Message>,
}

pub fn start(mut settings: Settings) -> anyhow::Result<Start> {
    let transcript = settings.load.as_deref().map(Transcript::load).transpose()?;
    if let Some(t) = &transcript {
        settings.follow(t);
    }
    let prompts = Prompts::load(&settings.prompt_folders()?)?;
    Ok(Start {
        settings,
        prompts,
        messages: transcript.map(|t| t.messages).unwrap_or_default(),
    })
}

impl Start {
    /// Loads the model (or reaches the server that runs it) and goes on
    /// from the saved messages, if any.
    pub fn open(self) -> anyhow::Result<Conversation> {
        let mut conversation = match &self.settings.remote.value {
            Some(url) => {
                let remote = self.settings.open_remote(url)?;
                let defaults = GenerationDefaults::default();
                let options = self.settings.options(self.prompts, &defaults);
                Conversation::with_engine(Engine::Remote(remote), options)
            }
            None => {
                let model = self.settings.open_model()?;
                let options = self.settings.options(self.prompts, &model.defaults);
                let prompt_cache = self.settings.prompt_cache(&model);
                let mut conversation = Conversation::new(model, options);
                if let Engine::Local(local) = &mut conversation.engine {
                    local.prompt_cache = prompt_cache;
                }
                conversation
            }
        };
        conversation.restore(self.messages);
        Ok(conversation)
    }
}
