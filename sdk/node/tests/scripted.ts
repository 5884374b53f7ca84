// The scripted agent the real-framework checks share, as sdk/python's
// tests/scripted.py: an LLM with canned replies and a tool. Each reply
// reports usage (5n completion and 20n prompt tokens for the n-th), so a
// session's report has usage for model scripted-1.

import { llm, voice } from '@livekit/agents';
import { z } from 'zod';

/** Canned replies: a function call for a weather question, then its answer; an echo otherwise. */
export class ScriptedLLM extends llm.LLM {
  calls = 0;
  label(): string {
    return 'scripted';
  }
  get model(): string {
    return 'scripted-1';
  }
  get provider(): string {
    return 'parley-test';
  }
  chat({ chatCtx, toolCtx, connOptions }: Parameters<llm.LLM['chat']>[0]): llm.LLMStream {
    this.calls++;
    return new ScriptedStream(this, { chatCtx, toolCtx, connOptions: connOptions! }, this.calls);
  }
}

class ScriptedStream extends llm.LLMStream {
  constructor(
    l: llm.LLM,
    p: ConstructorParameters<typeof llm.LLMStream>[1],
    private readonly n: number,
  ) {
    super(l, p);
  }
  protected async run(): Promise<void> {
    const items = this.chatCtx.items;
    const last = items[items.length - 1];
    const id = `chunk_${this.n}`;
    const n = this.n;
    const usage = { completionTokens: 5 * n, promptTokens: 20 * n, promptCachedTokens: 0, totalTokens: 25 * n };
    if (last?.type === 'function_call_output') {
      this.queue.put({ id, delta: { role: 'assistant', content: `The weather: ${last.output}.` }, usage });
      return;
    }
    const text = last?.type === 'message' ? (last.textContent ?? '') : '';
    if (/weather/i.test(text)) {
      const call = llm.FunctionCall.create({ callId: `call_${this.n}`, name: 'getWeather', args: '{"city":"Paris"}' });
      this.queue.put({ id, delta: { role: 'assistant', toolCalls: [call] }, usage });
    } else {
      this.queue.put({ id, delta: { role: 'assistant', content: `You said: ${text}` }, usage });
    }
  }
}

export const newAgent = () =>
  new voice.Agent({
    instructions: 'You are a terse assistant.',
    tools: {
      getWeather: llm.tool({
        description: 'Looks up the weather.',
        parameters: z.object({ city: z.string() }),
        execute: async ({ city }) => `sunny in ${city}`,
      }),
    },
  });

