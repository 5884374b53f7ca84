import { defineConfig } from "vite";

// `parley dev` allows the origins http://localhost:5173 and
// http://127.0.0.1:5173 by default, so the dev server must not drift to
// another port when 5173 is taken.
export default defineConfig({
  server: { port: 5173, strictPort: true },
  preview: { port: 5173, strictPort: true },
  build: { target: "es2022" },
});
