// Live updates: the server's change stream (/events/v1/stream) says when what the page shows
// changed, and the page fetches it again. Closed when the page goes away.
import { onBeforeUnmount, onMounted, ref } from 'vue'

// `incident` (a function giving an incident id) also watches that incident, so its page
// hears of what happens to it after it left the list of open ones. A stream tells only of
// what changes while it is open: each time the browser opens one (the first may open well
// after the page first read what it shows; a stream ends every few minutes, or the
// connection broke), the page fetches again what may have changed in between (another
// person's approval, say).
export function useLive(refetch, incident = null) {
  const connected = ref(false)
  let source = null
  onMounted(() => {
    const id = incident && incident()
    source = new EventSource('/events/v1/stream' + (id ? `?incident=${encodeURIComponent(id)}` : ''))
    source.onopen = () => {
      connected.value = true
      refetch()
    }
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
