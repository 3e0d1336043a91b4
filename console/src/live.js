// Live updates: the server's change stream (/events/v1/stream) says when what the page shows
// changed, and the page fetches it again. Closed when the page goes away.
import { onBeforeUnmount, onMounted, ref } from 'vue'

export function useLive(refetch) {
  const connected = ref(false)
  let source = null
  onMounted(() => {
    source = new EventSource('/events/v1/stream')
    source.onopen = () => (connected.value = true)
    source.onerror = () => (connected.value = false)
    source.addEventListener('change', () => refetch())
    // The session ended: the next fetch answers 401 and the page goes to sign-in.
    source.addEventListener('expired', () => {
      source.close()
      refetch()
    })
  })
  onBeforeUnmount(() => source && source.close())
  return { connected }
}
