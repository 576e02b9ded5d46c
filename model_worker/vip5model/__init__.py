"""VIP5: multimodal personalized prompts for a T5 encoder-decoder with adapters.

Modules, in data-flow order:
  config.py      VIP5Config (frozen, validated) and backbone presets ("tiny", "small", "t5-small", "t5-base")
  tokenizer.py   build_tokenizer / build_template_tokenizer (BPE, one token per digit) or load_tokenizer
  prompts.py     templates of the three task families -> Prompt(source, image_item_ids, target)
  encoding.py    PromptEncoder: prompts + image lookup -> EncodedBatch of tensors
  backbone.py    pretrained T5 + its tokenizer by hub name / path, identified by a digest of its weights
  model.py       VIP5Model: image/whole-word/modality embeddings around T5, stages, parameter groups
  adapters/      bottleneck adapters (config.py, layer.py, model.py) and peft LoRA (lora.py)
  checkpoint.py  model directory and adapter-only artifacts (safetensors + manifest)
  trie.py        ItemTrie over item ids' tokens; packed form for exact scoring
  scoring.py     exact trie scoring, naive scoring, constrained beam search, whole-catalogue scoring

Typical use:
  tokenizer = build_template_tokenizer(explanation_texts)           # or load_tokenizer(path)
  model = VIP5Model.build(VIP5Config(backbone="small"), tokenizer, seed=0)
  batch = model.encoder.encode([sequential_prompt("A-1", user, history, target)], image_lookup)
  model.set_stage("pretrain"); loss = model(batch)["loss"]; ...    # then set_stage("adapt")
  model.save_pretrained(path); model.save_adapter(adapter_path); model.load_adapter(adapter_path)

Importing this package is light; torch/transformers load when the submodules are imported.
"""
