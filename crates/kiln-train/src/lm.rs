//! Language-model training: the GPT recipes, their loop (evaluation every N steps, best
//! checkpoint, tokenizer beside it) and loading a trained model back.
