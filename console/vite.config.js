import { defineConfig } from 'vite'
import vue from '@vitejs/plugin-vue'

// `npm run build` writes dist/, which the gateway serves at `/` (shared/console.py).
// `npm run dev` proxies the API to a running `yuqing up`.
const api = process.env.YUQING_URL || 'http://127.0.0.1:8000'
export default defineConfig({
  plugins: [vue()],
  build: { chunkSizeWarningLimit: 2000 },
  server: {
    proxy: Object.fromEntries(
      ['/auth', '/events', '/intake', '/grading', '/notifications', '/statements', '/archive'].map(
        (p) => [p, api],
      ),
    ),
  },
})
