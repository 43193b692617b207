"""The benchmarks papers in this field report, beside omni-train's own checks (`omni_train.evaluate`).

- `spoken_qa`: Llama Questions, Web Questions and TriviaQA, spoken: accuracy of the text answer
  (A1T2) and of the spoken answer as the user's Whisper hears it (A1A2);
- `voicebench`: VoiceBench's rule-scored subsets (and answers for its GPT judge), with `ifeval`'s
  instruction rules;
- `speech_quality`: time to first audio, real-time factor and a pluggable MOS predictor;
- `report`: every result of a checkpoint in one table, with the published rows;
- `bench_data`: the benchmarks' published data layouts, read from local paths or the hub cache.
"""
