// One clock for every countdown: the server's time, advanced each second.
import { ref } from 'vue'
import { serverNow } from './api.js'

export const now = ref(serverNow())
setInterval(() => {
  now.value = serverNow()
}, 1000)
